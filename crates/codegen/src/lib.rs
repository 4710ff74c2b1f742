//! Switchboard's build-time code generator. From the `.proto` files it
//! produces, in `OUT_DIR`:
//!
//! * prost messages and tonic servers/clients (through tonic-prost-build),
//! * proto3 JSON serde impls (through pbjson-build),
//! * for every package with services, `<package>.switchboard.rs`: a service
//!   guard that validates input before the method runs, the REST routes of
//!   every google.api.http binding, `Validate` impls for every message, and
//!   the access policy table,
//! * `openapi.json`, the OpenAPI 3.1 document of the REST API,
//! * `file_descriptor_set.bin`, for gRPC server reflection,
//! * `_includes.rs`, the module tree that includes all of it.
//!
//! Protos are compiled by protox, in pure Rust: no `protoc` is needed.
//! `build.rs` is a few lines calling [`Generator`].

mod model;
mod openapi;
mod options;
mod rust;
mod template;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use prost::Message as _;
use prost_reflect::DescriptorPool;

pub use model::{ApiModel, ScalarKind};
pub use openapi::OpenApiInfo;
pub use options::AccessRule;
pub use template::{Segment, Template, TemplateError, Variable};

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// The protos do not compile.
    #[error("protos do not compile: {0}")]
    Compile(String),
    /// A google.api.http rule or an option is wrong.
    #[error("{method}: {reason}")]
    Rule {
        /// The full method name.
        method: String,
        /// What is wrong.
        reason: String,
    },
    /// A field option is wrong.
    #[error("{field}: {reason}")]
    FieldOption {
        /// The full field name.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing the output failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Where generated Rust refers to the well-known types: Timestamp and
/// FieldMask from the runtime (whose JSON follows the spec), the rest from
/// pbjson-types.
const EXTERN_PATHS: &[(&str, &str)] = &[
    (
        ".google.protobuf.Timestamp",
        "::switchboard_rest::wkt::Timestamp",
    ),
    (
        ".google.protobuf.FieldMask",
        "::switchboard_rest::wkt::FieldMask",
    ),
    (".google.protobuf", "::pbjson_types"),
];

/// Generates everything from a set of proto files.
#[derive(Debug, Clone)]
pub struct Generator {
    includes: Vec<PathBuf>,
    files: Vec<String>,
    info: OpenApiInfo,
    out_dir: Option<PathBuf>,
}

impl Generator {
    /// A generator over the protos under `include` (the import root).
    pub fn new(include: impl Into<PathBuf>) -> Self {
        Self {
            includes: vec![include.into()],
            files: Vec::new(),
            info: OpenApiInfo::default(),
            out_dir: None,
        }
    }

    /// Adds another import root, searched after the first ones: test protos
    /// import `google/api/*.proto` and `switchboard/v1/options.proto` from the
    /// workspace's `proto/` this way instead of keeping copies.
    pub fn include(mut self, include: impl Into<PathBuf>) -> Self {
        self.includes.push(include.into());
        self
    }

    /// Adds proto files to compile, relative to the include root.
    pub fn files<S: AsRef<str>>(mut self, files: &[S]) -> Self {
        self.files
            .extend(files.iter().map(|file| file.as_ref().to_owned()));
        self
    }

    /// Sets the OpenAPI document's title, version and description.
    pub fn openapi_info(mut self, info: OpenApiInfo) -> Self {
        self.info = info;
        self
    }

    /// Writes into `dir` instead of `OUT_DIR`.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Compiles the protos into a descriptor pool (with source info and
    /// imports), without writing anything.
    ///
    /// # Errors
    /// [`CodegenError::Compile`] with protox's message.
    pub fn compile(&self) -> Result<(DescriptorPool, Vec<u8>), CodegenError> {
        let mut compiler = protox::Compiler::new(&self.includes)
            .map_err(|e| CodegenError::Compile(e.to_string()))?;
        compiler.include_imports(true).include_source_info(true);
        compiler
            .open_files(&self.files)
            .map_err(|e| CodegenError::Compile(format!("{e:?}")))?;
        // The encoded set keeps option extensions; the prost-types one loses them.
        let bytes = compiler.encode_file_descriptor_set();
        let pool = DescriptorPool::decode(bytes.as_slice())
            .map_err(|e| CodegenError::Compile(e.to_string()))?;
        Ok((pool, bytes))
    }

    /// Resolves the API model (services, bindings, access rules).
    ///
    /// # Errors
    /// Any [`CodegenError`] from compiling or resolving the rules.
    pub fn model(&self) -> Result<ApiModel, CodegenError> {
        let (pool, _) = self.compile()?;
        ApiModel::new(pool, &self.files)
    }

    /// The OpenAPI document as pretty JSON.
    ///
    /// # Errors
    /// Any [`CodegenError`] from compiling or resolving the rules.
    pub fn openapi(&self) -> Result<String, CodegenError> {
        let model = self.model()?;
        openapi::document(&model, &self.info)
    }

    /// Generates every output into `OUT_DIR` (or the directory set with
    /// [`Generator::out_dir`]) and tells cargo to rerun on proto changes.
    ///
    /// # Errors
    /// Any [`CodegenError`].
    pub fn generate(self) -> Result<(), CodegenError> {
        let out_dir = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| {
                CodegenError::Compile("OUT_DIR is not set: run from build.rs or set out_dir".into())
            })?),
        };
        for include in &self.includes {
            println!("cargo:rerun-if-changed={}", include.display());
        }
        let (pool, bytes) = self.compile()?;
        let model = ApiModel::new(pool.clone(), &self.files)?;
        write(&out_dir.join("file_descriptor_set.bin"), &bytes)?;

        let fds = prost_types::FileDescriptorSet::decode(bytes.as_slice())
            .map_err(|e| CodegenError::Compile(e.to_string()))?;
        let mut tonic = tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .compile_well_known_types(true)
            .out_dir(&out_dir);
        for (proto, rust) in EXTERN_PATHS {
            tonic = tonic.extern_path(*proto, *rust);
        }
        tonic.compile_fds(fds).map_err(|e| CodegenError::Io {
            path: out_dir.clone(),
            source: e,
        })?;

        let packages: BTreeSet<String> = pool
            .files()
            .map(|file| file.package_name().to_owned())
            .filter(|package| package != "google.protobuf")
            .collect();
        let mut json = pbjson_build::Builder::new();
        json.register_descriptors(&bytes)
            .map_err(|e| CodegenError::Compile(e.to_string()))?
            .out_dir(&out_dir)
            .emit_fields();
        for (proto, rust) in EXTERN_PATHS {
            json.extern_path(*proto, *rust);
        }
        let prefixes: Vec<String> = packages.iter().map(|p| format!(".{p}")).collect();
        json.build(&prefixes).map_err(|e| CodegenError::Io {
            path: out_dir.clone(),
            source: e,
        })?;

        for package in &packages {
            let code = rust::package(&model, package)?;
            write(
                &out_dir.join(format!("{package}.switchboard.rs")),
                code.as_bytes(),
            )?;
        }
        write(
            &out_dir.join("_includes.rs"),
            includes(&packages).as_bytes(),
        )?;
        write(
            &out_dir.join("openapi.json"),
            openapi::document(&model, &self.info)?.as_bytes(),
        )?;
        Ok(())
    }
}

fn write(path: &Path, contents: &[u8]) -> Result<(), CodegenError> {
    std::fs::write(path, contents).map_err(|source| CodegenError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The module tree: one module per package, each including its prost, serde
/// and Switchboard outputs.
fn includes(packages: &BTreeSet<String>) -> String {
    #[derive(Default)]
    struct Node {
        children: std::collections::BTreeMap<String, Node>,
        package: Option<String>,
    }
    let mut root = Node::default();
    for package in packages {
        let mut node = &mut root;
        for part in package.split('.') {
            node = node.children.entry(part.to_owned()).or_default();
        }
        node.package = Some(package.clone());
    }
    fn emit(node: &Node, depth: usize, out: &mut String) {
        let indent = "    ".repeat(depth);
        if let Some(package) = &node.package {
            for suffix in ["rs", "serde.rs", "switchboard.rs"] {
                let _ = writeln!(
                    out,
                    "{indent}include!(concat!(env!(\"OUT_DIR\"), \"/{package}.{suffix}\"));"
                );
            }
        }
        for (name, child) in &node.children {
            let _ = writeln!(
                out,
                "{indent}/// Generated from the `{name}` proto package level."
            );
            let _ = writeln!(
                out,
                "{indent}#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]"
            );
            let _ = writeln!(out, "{indent}pub mod {} {{", rust::module_name(name));
            emit(child, depth + 1, out);
            let _ = writeln!(out, "{indent}}}");
        }
    }
    let mut out = String::from("// @generated by switchboard-codegen. Do not edit.\n");
    emit(&root, 0, &mut out);
    out
}
