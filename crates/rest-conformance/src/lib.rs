//! The conformance protos compiled by the real generator, and
//! [`EchoLibrary`], a service that answers each request with what it
//! received. Tests in `tests/` send HTTP requests through the generated REST
//! routes and read back how each one was transcoded.

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use switchboard_rest::RestRouter;
use tonic::{Request, Response, Status};

use conformance::v1::library_server::Library;
use conformance::v1::{
    ArchiveBookRequest, Book, BookTags, CreateBookRequest, DeleteBookRequest, GetBookRequest,
    GetEditionRequest, ListBookTagsRequest, ListBooksRequest, MoveBookRequest, SleepRequest,
    StreamBooksRequest, UpdateBookRequest,
};

/// The REST router of the generated `Library` routes over [`EchoLibrary`].
pub fn rest_router() -> RestRouter {
    RestRouter::new(conformance::v1::library_rest_routes(Arc::new(EchoLibrary)))
}

/// Answers every request with what it received; streams and sleeps as the
/// request asks.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoLibrary;

type BookStream = Pin<Box<dyn Stream<Item = Result<Book, Status>> + Send>>;

#[tonic::async_trait]
impl Library for EchoLibrary {
    async fn get_book(
        &self,
        request: Request<GetBookRequest>,
    ) -> Result<Response<GetBookRequest>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn list_books(
        &self,
        request: Request<ListBooksRequest>,
    ) -> Result<Response<ListBooksRequest>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn create_book(
        &self,
        request: Request<CreateBookRequest>,
    ) -> Result<Response<CreateBookRequest>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn update_book(
        &self,
        request: Request<UpdateBookRequest>,
    ) -> Result<Response<UpdateBookRequest>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn delete_book(
        &self,
        _request: Request<DeleteBookRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn archive_book(
        &self,
        request: Request<ArchiveBookRequest>,
    ) -> Result<Response<ArchiveBookRequest>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn move_book(
        &self,
        request: Request<MoveBookRequest>,
    ) -> Result<Response<MoveBookRequest>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn list_book_tags(
        &self,
        request: Request<ListBookTagsRequest>,
    ) -> Result<Response<BookTags>, Status> {
        let ListBookTagsRequest { name, tags } = request.into_inner();
        Ok(Response::new(BookTags { name, tags }))
    }

    async fn get_edition(
        &self,
        request: Request<GetEditionRequest>,
    ) -> Result<Response<GetEditionRequest>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    type StreamBooksStream = BookStream;

    async fn stream_books(
        &self,
        request: Request<StreamBooksRequest>,
    ) -> Result<Response<Self::StreamBooksStream>, Status> {
        let request = request.into_inner();
        if request.parent == "shelves/missing" {
            return Err(Status::not_found("no shelf shelves/missing"));
        }
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let pause = Duration::from_millis(u64::try_from(request.interval_ms).unwrap_or(0));
            for index in 1..=request.count {
                let book = Book {
                    name: format!("{}/books/{index}", request.parent),
                    title: format!("Book {index}"),
                    ..Book::default()
                };
                if sender.send(Ok(book)).await.is_err() {
                    return;
                }
                tokio::time::sleep(pause).await;
            }
            if !request.fail_with.is_empty() {
                let _ = sender.send(Err(Status::aborted(request.fail_with))).await;
                // Like a producer that has not noticed yet, keep the stream
                // open: the response must end at the error regardless.
                tokio::time::sleep(pause).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn sleep(
        &self,
        request: Request<SleepRequest>,
    ) -> Result<Response<SleepRequest>, Status> {
        let millis = u64::try_from(request.get_ref().millis).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok(Response::new(request.into_inner()))
    }
}
