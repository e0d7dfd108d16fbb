//! Adapters between h3 request streams and the rest of the stack, shared by client and
//! server: an `http_body::Body` over the receive half (so tonic can read requests and
//! responses), and a pump that joins a CONNECT stream to any `AsyncRead + AsyncWrite`.
//!
//! h3 has distinct client and server stream types with the same methods; the two small
//! traits below let one implementation serve both.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h3::error::StreamError;
use http::HeaderMap;
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type ServerRecv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
type ClientRecv = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;
pub(crate) type ServerSend = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
pub(crate) type ClientSend = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// The receive half of a request stream, client or server.
pub(crate) trait RecvHalf: Send + Unpin + 'static {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>>;
    fn poll_trailers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<HeaderMap>, StreamError>>;
}

macro_rules! impl_recv_half {
    ($t:ty) => {
        impl RecvHalf for $t {
            fn poll_data(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Option<Bytes>, StreamError>> {
                self.poll_recv_data(cx).map(|r| {
                    r.map(|opt| {
                        opt.map(|mut b| {
                            let n = b.remaining();
                            b.copy_to_bytes(n)
                        })
                    })
                })
            }

            fn poll_trailers(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Option<HeaderMap>, StreamError>> {
                self.poll_recv_trailers(cx)
            }
        }
    };
}

impl_recv_half!(ServerRecv);
impl_recv_half!(ClientRecv);

/// The send half of a request stream, client or server.
pub(crate) trait SendHalf: Send + 'static {
    fn send(&mut self, data: Bytes) -> impl Future<Output = Result<(), StreamError>> + Send;
    fn trailers(&mut self, t: HeaderMap) -> impl Future<Output = Result<(), StreamError>> + Send;
    fn finish(&mut self) -> impl Future<Output = Result<(), StreamError>> + Send;
}

macro_rules! impl_send_half {
    ($t:ty) => {
        impl SendHalf for $t {
            async fn send(&mut self, data: Bytes) -> Result<(), StreamError> {
                self.send_data(data).await
            }
            async fn trailers(&mut self, t: HeaderMap) -> Result<(), StreamError> {
                self.send_trailers(t).await
            }
            async fn finish(&mut self) -> Result<(), StreamError> {
                <$t>::finish(self).await
            }
        }
    };
}

impl_send_half!(ServerSend);
impl_send_half!(ClientSend);

/// An HTTP body read from an h3 stream: DATA frames, then optional trailers.
pub(crate) struct H3Body<R> {
    recv: R,
    data_done: bool,
    done: bool,
}

impl<R: RecvHalf> H3Body<R> {
    pub(crate) fn new(recv: R) -> Self {
        H3Body {
            recv,
            data_done: false,
            done: false,
        }
    }
}

impl<R: RecvHalf> http_body::Body for H3Body<R> {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) => this.data_done = true,
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
        // Only done once the trailers have been polled to completion: they may arrive in a
        // later packet than the last DATA frame, and a Pending here must be polled again.
        let trailers = ready!(this.recv.poll_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Sends an HTTP body as DATA frames (and trailers) on `send`, then finishes the stream.
pub(crate) async fn send_body<S, B>(send: &mut S, body: B) -> Result<(), crate::BoxError>
where
    S: SendHalf,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::BoxError>,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Into::into)?;
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    send.send(data).await?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.trailers(trailers).await?;
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}

/// Read size for tunnel pumps: large enough to fill a DATA frame per syscall.
const PUMP_CHUNK: usize = 64 * 1024;

/// Joins a CONNECT stream to `io` until both directions are closed. A FIN from either side
/// is a half-close: the other direction keeps flowing.
pub(crate) async fn pump<S, R, IO>(mut send: S, mut recv: R, io: IO)
where
    S: SendHalf,
    R: RecvHalf,
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let upstream = async move {
        let mut buf = bytes::BytesMut::with_capacity(PUMP_CHUNK);
        loop {
            buf.reserve(PUMP_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if send.send(buf.split().freeze()).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = send.finish().await;
    };
    let downstream = async move {
        while let Ok(Some(data)) = std::future::poll_fn(|cx| recv.poll_data(cx)).await {
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A fake receive half whose trailers arrive one poll after the data ended, as when the
    /// last DATA frame and the trailers come in different packets.
    struct LateTrailers {
        data: Option<Bytes>,
        trailer_polls: u32,
    }

    impl RecvHalf for LateTrailers {
        fn poll_data(&mut self, _: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
            Poll::Ready(Ok(self.data.take()))
        }

        fn poll_trailers(
            &mut self,
            cx: &mut Context<'_>,
        ) -> Poll<Result<Option<HeaderMap>, StreamError>> {
            self.trailer_polls += 1;
            if self.trailer_polls == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut t = HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            Poll::Ready(Ok(Some(t)))
        }
    }

    #[test]
    fn trailers_that_arrive_late_are_not_lost() {
        let body = H3Body::new(LateTrailers {
            data: Some(Bytes::from_static(b"payload")),
            trailer_polls: 0,
        });
        let collected = futures::executor::block_on(body.collect()).unwrap();
        let trailers = collected
            .trailers()
            .cloned()
            .expect("trailers were dropped");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"payload"));
    }
}
