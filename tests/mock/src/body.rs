//! The response body: either one buffer, or a sequence of frames (SSE events) optionally paced
//! by a delay before each frame. No boxing, no channels, no extra task per stream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

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
        })
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Paced(p) => {
                if p.frames.is_empty() {
                    return Poll::Ready(None);
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
            MockBody::Paced(p) => p.frames.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Paced(_) => SizeHint::default(),
        }
    }
}
