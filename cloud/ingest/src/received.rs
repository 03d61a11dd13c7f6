//! How many bytes of a call's request body have reached tonic's decoder: [`CountReceived`] wraps a
//! gRPC service and puts a [`ReceivedBytes`] counter in each request's extensions.
//!
//! The upload loop compares it with the bytes of the messages it has taken: more received than
//! taken means a message is partly in the decoder's buffer, so the stream keeps the room it
//! reserved for it instead of giving it back as an idle stream would (service.rs, `InFlight`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http_body::Frame;
use tonic::body::Body;
use tonic::codegen::{Bytes, Service, http};
use tonic::server::NamedService;

/// Bytes of a request body read so far.
#[derive(Debug, Clone, Default)]
pub struct ReceivedBytes(Arc<AtomicU64>);

impl ReceivedBytes {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gRPC service whose requests' bodies are counted. See the module docs.
#[derive(Debug, Clone)]
pub struct CountReceived<S>(pub S);

impl<S: NamedService> NamedService for CountReceived<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: Service<http::Request<Body>>> Service<http::Request<Body>> for CountReceived<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> S::Future {
        let received = ReceivedBytes::default();
        let counter = received.clone();
        let mut req = req.map(|inner| Body::new(Counted { inner, received: counter }));
        req.extensions_mut().insert(received);
        self.0.call(req)
    }
}

struct Counted {
    inner: Body,
    received: ReceivedBytes,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.received.0.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;

    use super::*;

    #[tokio::test]
    async fn the_bytes_a_body_delivers_are_counted() {
        let received = ReceivedBytes::default();
        let inner = Body::new(one_frame(b"hello, world".to_vec()));
        let mut body = Counted { inner, received: received.clone() };
        let mut total = 0;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            total += frame.unwrap().into_data().map_or(0, |d| d.len());
        }
        assert_eq!((total, received.get()), (12, 12));
    }

    /// A body of one data frame.
    fn one_frame(bytes: Vec<u8>) -> impl http_body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + 'static {
        struct Once(Option<Bytes>);
        impl http_body::Body for Once {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
            }
        }
        Once(Some(Bytes::from(bytes)))
    }
}
