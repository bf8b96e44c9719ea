//! The response body: either one buffer, or a sequence of frames (SSE events) optionally paced
//! by a delay before each frame. No boxing, no channels, no extra task per stream. A body can
//! also end by failing ([`ConnectionCut`]), which makes hyper drop the connection mid-answer
//! (the `stream_cut_after_first_chunk` fault).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// How long a cut body waits after its last frame before failing. hyper writes what it has
/// buffered only when it flushes, and a body error closes the connection at once: without
/// this pause the frames sent before the cut could be lost with it.
const FLUSH_BEFORE_CUT: Duration = Duration::from_millis(20);

/// The error a cut body ends with. hyper answers a body error by closing the connection
/// without ending the message (HTTP/1.1: no last chunk, or fewer bytes than
/// `content-length`; HTTP/2: the stream is reset).
#[derive(Debug, thiserror::Error)]
#[error("tollgate-mock cut the connection (a stream_cut_after_first_chunk fault)")]
pub struct ConnectionCut;

/// Body of every response the mock sends.
#[derive(Debug)]
pub enum MockBody {
    /// A complete body, sent with `content-length`.
    Full(Option<Bytes>),
    /// A sequence of frames, sent chunked; `delay` is waited before each frame.
    Paced(Paced),
}

#[derive(Debug)]
pub struct Paced {
    frames: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    end: End,
    /// The `content-length` promised (a cut buffered body keeps its full length).
    declared_length: Option<u64>,
}

/// What happens once the frames are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The body ends normally.
    Finish,
    /// The body fails, so the connection drops.
    Cut,
    /// The failure was reported; nothing more comes.
    Failed,
}

impl MockBody {
    pub(crate) fn full(bytes: Bytes) -> Self {
        MockBody::Full(Some(bytes))
    }

    pub(crate) fn paced(frames: Vec<Bytes>, delay: Duration) -> Self {
        MockBody::Paced(Paced {
            frames: frames.into(),
            delay,
            sleep: None,
            end: End::Finish,
            declared_length: None,
        })
    }

    /// This body with the connection dropped at its end instead: a stream sends its frames
    /// (the handler cut them after the first content event) and then fails; a buffered body
    /// keeps its `content-length` but sends only the first half of its bytes.
    pub(crate) fn cut_connection(self) -> Self {
        match self {
            MockBody::Paced(mut paced) => {
                paced.end = End::Cut;
                MockBody::Paced(paced)
            }
            MockBody::Full(bytes) => {
                let bytes = bytes.unwrap_or_default();
                let head = bytes.slice(..bytes.len() / 2);
                MockBody::Paced(Paced {
                    frames: std::iter::once(head).filter(|b| !b.is_empty()).collect(),
                    delay: Duration::ZERO,
                    sleep: None,
                    end: End::Cut,
                    declared_length: Some(bytes.len() as u64),
                })
            }
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = ConnectionCut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ConnectionCut>>> {
        match self.get_mut() {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Paced(p) => {
                if p.frames.is_empty() {
                    return match p.end {
                        End::Finish | End::Failed => Poll::Ready(None),
                        End::Cut => {
                            let sleep = p.sleep.get_or_insert_with(|| {
                                Box::pin(tokio::time::sleep(FLUSH_BEFORE_CUT))
                            });
                            if sleep.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            p.sleep = None;
                            p.end = End::Failed;
                            Poll::Ready(Some(Err(ConnectionCut)))
                        }
                    };
                }
                if !p.delay.is_zero() {
                    let delay = p.delay;
                    let sleep = p
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    p.sleep = None;
                }
                Poll::Ready(p.frames.pop_front().map(|b| Ok(Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Full(b) => b.is_none(),
            // A cut still owes its failure after the last frame.
            MockBody::Paced(p) => p.frames.is_empty() && p.end != End::Cut,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Paced(p) => p
                .declared_length
                .map(SizeHint::with_exact)
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Data frames until the end, and whether the body failed.
    async fn drain(mut body: MockBody) -> (Vec<Bytes>, bool) {
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => frames.extend(frame.into_data().ok()),
                Err(ConnectionCut) => return (frames, true),
            }
        }
        (frames, false)
    }

    #[tokio::test]
    async fn a_cut_stream_sends_its_frames_then_fails() {
        let frames = vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")];
        let body = MockBody::paced(frames.clone(), Duration::ZERO).cut_connection();
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), None);
        assert_eq!(drain(body).await, (frames.clone(), true));
        let whole = MockBody::paced(frames.clone(), Duration::ZERO);
        assert_eq!(drain(whole).await, (frames, false));
    }

    #[tokio::test]
    async fn a_cut_buffered_body_promises_its_length_and_sends_half() {
        let body = MockBody::full(Bytes::from_static(b"0123456789")).cut_connection();
        assert_eq!(body.size_hint().exact(), Some(10));
        assert_eq!(
            drain(body).await,
            (vec![Bytes::from_static(b"01234")], true)
        );
    }
}
