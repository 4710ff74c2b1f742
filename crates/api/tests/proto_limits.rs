//! Limits the proto declares and the domain enforces again. The core cannot
//! see the proto, so each of its constants is held here to the generated
//! descriptors: the `(switchboard.v1.field)` rules the guards check on every
//! transport, and the page-size defaults the proto's comments promise.

use prost_reflect::{DescriptorPool, FieldDescriptor, Value};
use switchboard_core::chat::{
    DEFAULT_CONVERSATION_PAGE_SIZE, DEFAULT_MESSAGE_PAGE_SIZE, MAX_CONTENT_CHARS,
    MAX_FEEDBACK_CHARS, MAX_PAGE_SIZE, MAX_TITLE_CHARS,
};
use switchboard_core::identity::password::PasswordPolicy;
use switchboard_core::identity::{DEFAULT_AUDIT_PAGE_SIZE, DEFAULT_USER_PAGE_SIZE};
use switchboard_core::jobs::DEFAULT_DEAD_LETTER_PAGE_SIZE;
use switchboard_proto::v1::FieldRules;

/// The descriptors the server serves and generated its code from.
fn pool() -> DescriptorPool {
    DescriptorPool::decode(switchboard_proto::FILE_DESCRIPTOR_SET).expect("the descriptor set")
}

/// The field `name` of the message `switchboard.v1.<message>`.
fn field(pool: &DescriptorPool, message: &str, name: &str) -> FieldDescriptor {
    pool.get_message_by_name(&format!("switchboard.v1.{message}"))
        .unwrap_or_else(|| panic!("no message {message}"))
        .get_field_by_name(name)
        .unwrap_or_else(|| panic!("no field {message}.{name}"))
}

/// The `(switchboard.v1.field)` rules of a field, as declared.
fn rules(pool: &DescriptorPool, field: &FieldDescriptor) -> FieldRules {
    let extension = pool
        .get_extension_by_name("switchboard.v1.field")
        .expect("the field rules option");
    let options = field.options();
    assert!(
        options.has_extension(&extension),
        "{} declares no rules",
        field.full_name()
    );
    match options.get_extension(&extension).as_ref() {
        Value::Message(rules) => rules.transcode_to().expect("FieldRules"),
        other => panic!("{}: rules of another kind: {other:?}", field.full_name()),
    }
}

/// The number in "default (N)" of a field's leading comment.
fn stated_default(field: &FieldDescriptor) -> Option<u32> {
    let info = field
        .parent_file()
        .file_descriptor_proto()
        .source_code_info
        .clone()?;
    let comment = info
        .location
        .iter()
        .find(|location| location.path == field.path())?
        .leading_comments
        .clone()?;
    let prose = comment.split_whitespace().collect::<Vec<_>>().join(" ");
    let (_, after) = prose.split_once("default (")?;
    after.split_once(')')?.0.parse().ok()
}

/// Every request of a listing: the messages with a `page_size`.
fn listings(pool: &DescriptorPool) -> Vec<FieldDescriptor> {
    pool.all_messages()
        .filter(|message| message.package_name() == "switchboard.v1")
        .filter_map(|message| message.get_field_by_name("page_size"))
        .collect()
}

#[test]
fn text_limits_of_the_domain_are_the_protos() {
    let pool = pool();
    let longest_password = PasswordPolicy::default().max_len;
    let limits = [
        ("Conversation", "title", MAX_TITLE_CHARS),
        ("SendMessageRequest", "content", MAX_CONTENT_CHARS),
        ("RateMessageRequest", "comment", MAX_FEEDBACK_CHARS),
        ("RegisterRequest", "password", longest_password),
        ("LoginRequest", "password", longest_password),
        (
            "ChangePasswordRequest",
            "current_password",
            longest_password,
        ),
        ("ChangePasswordRequest", "new_password", longest_password),
    ];
    for (message, name, domain) in limits {
        let declared = rules(&pool, &field(&pool, message, name)).max_len;
        assert_eq!(
            usize::try_from(declared).unwrap(),
            domain,
            "{message}.{name}: the proto's max_len and the domain's"
        );
    }
}

#[test]
fn every_listing_caps_its_page_at_the_domains_largest_page() {
    let pool = pool();
    let listings = listings(&pool);
    assert!(listings.len() >= 5, "the listings: {listings:?}");
    for page_size in listings {
        let declared = rules(&pool, &page_size);
        assert_eq!(
            (declared.minimum, declared.maximum),
            (Some(0.0), Some(f64::from(MAX_PAGE_SIZE))),
            "{}",
            page_size.full_name()
        );
    }
}

#[test]
fn every_listings_stated_default_page_is_the_domains() {
    let pool = pool();
    for page_size in listings(&pool) {
        let domain = match page_size.parent_message().name() {
            "ListConversationsRequest" => DEFAULT_CONVERSATION_PAGE_SIZE,
            "ListMessagesRequest" => DEFAULT_MESSAGE_PAGE_SIZE,
            "ListUsersRequest" => DEFAULT_USER_PAGE_SIZE,
            "ListAuditEventsRequest" => DEFAULT_AUDIT_PAGE_SIZE,
            "ListDeadLettersRequest" => DEFAULT_DEAD_LETTER_PAGE_SIZE,
            other => panic!("{other}: which default of the domain does it get?"),
        };
        assert_eq!(
            stated_default(&page_size),
            Some(domain),
            "{}: the default its comment states",
            page_size.full_name()
        );
    }
}
