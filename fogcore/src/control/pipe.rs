//! A bounded byte pipe between blocking code and async HTTP bodies, so a manifest (gigabytes for
//! a large disk) streams through a server or a client without being held whole in memory.
//!
//! Either end works from either world: the writer is a blocking [`Write`] (a store writing a
//! manifest on a blocking thread) or an async [`PipeWriter::send`] (an HTTP body arriving); the
//! reader is a blocking [`Read`] (a store reading a manifest) or an [`http_body::Body`] (a
//! response or a request body). At most about `limit` bytes wait in between; a full pipe blocks
//! (or parks) its writer, an empty one its reader. No end ever needs a runtime handle, so the
//! blocking ends work on any thread.
//!
//! The writer ends the stream with [`PipeWriter::finish`]; dropped without it, or with
//! [`PipeWriter::fail`], the reader sees an error after the bytes already sent, never a clean end
//! that would pass for a whole manifest. A dropped reader makes writes fail (`BrokenPipe`), so a
//! writer whose reader gave up stops at once.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::Frame;

/// Bytes that may wait in a pipe of manifest bytes.
pub const PIPE_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Finished,
    Failed(String),
}

#[derive(Default)]
struct State {
    queue: VecDeque<Bytes>,
    queued: usize,
    end: Option<End>,
    reader_gone: bool,
    reader_waker: Option<Waker>,
    writer_waker: Option<Waker>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    limit: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes whoever waits on the other end (blocked threads and parked tasks).
    fn wake(&self, mut state: MutexGuard<'_, State>) {
        let wakers = [state.reader_waker.take(), state.writer_waker.take()];
        drop(state);
        self.changed.notify_all();
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }

    fn end(&self, end: End) {
        let mut state = self.lock();
        if state.end.is_none() {
            state.end = Some(end);
        }
        self.wake(state);
    }

    fn close_reader(&self) {
        let mut state = self.lock();
        state.reader_gone = true;
        state.queue.clear();
        state.queued = 0;
        self.wake(state);
    }
}

/// A new pipe holding at most about `limit` bytes.
pub fn pipe(limit: usize) -> (PipeWriter, PipeReader) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
        limit: limit.max(1),
    });
    (
        PipeWriter {
            shared: shared.clone(),
            ended: false,
        },
        PipeReader { shared },
    )
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the reading end stopped")
}

/// The writing end of a [`pipe`].
pub struct PipeWriter {
    shared: Arc<Shared>,
    ended: bool,
}

impl PipeWriter {
    /// Queues `bytes`, waiting (async) while the pipe is full; an error when the reader is gone.
    /// An empty piece is dropped: queued, it would read as the end of the stream.
    pub async fn send(&mut self, bytes: Bytes) -> io::Result<()> {
        let mut bytes = Some(bytes).filter(|b| !b.is_empty());
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if state.reader_gone {
                return Poll::Ready(Err(broken()));
            }
            if state.queued >= self.shared.limit {
                state.writer_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if let Some(b) = bytes.take() {
                state.queued += b.len();
                state.queue.push_back(b);
            }
            self.shared.wake(state);
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Ends the stream: the reader sees the end once it has read everything.
    pub fn finish(mut self) {
        self.ended = true;
        self.shared.end(End::Finished);
    }

    /// Ends the stream with an error the reader sees after the bytes already sent.
    pub fn fail(mut self, reason: impl Into<String>) {
        self.ended = true;
        self.shared.end(End::Failed(reason.into()));
    }

    /// A handle that can close the reading end from elsewhere (a client whose request ended
    /// while its body was still being written).
    pub fn reader_closer(&self) -> ReaderCloser {
        ReaderCloser(self.shared.clone())
    }
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut state = self.shared.lock();
        while !state.reader_gone && state.queued >= self.shared.limit {
            state = self.shared.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.reader_gone {
            return Err(broken());
        }
        // Big writes are cut so one write never holds much more than the limit.
        let n = buf.len().min(self.shared.limit.max(64 << 10));
        state.queued += n;
        state
            .queue
            .push_back(Bytes::copy_from_slice(buf.get(..n).unwrap_or(buf)));
        self.shared.wake(state);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        if !self.ended {
            self.shared.end(End::Failed("the sender stopped before the end".into()));
        }
    }
}

/// Closes the reading end of a pipe (see [`PipeWriter::reader_closer`]).
pub struct ReaderCloser(Arc<Shared>);

impl ReaderCloser {
    /// Drops what is queued and makes the writer's next write fail.
    pub fn close(&self) {
        self.0.close_reader();
    }
}

/// What a reader found first (see [`PipeReader::started`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Bytes are there to read, or the stream ended cleanly.
    Flowing,
    /// The writer failed before sending anything; the reason.
    Failed(String),
}

/// The reading end of a [`pipe`].
pub struct PipeReader {
    shared: Arc<Shared>,
}

impl PipeReader {
    /// Waits until bytes arrive or the stream ends: a server answers with its status only once
    /// it knows whether the writer failed before its first byte (an absent image: 404).
    pub async fn started(&mut self) -> Start {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if !state.queue.is_empty() {
                return Poll::Ready(Start::Flowing);
            }
            match &state.end {
                Some(End::Finished) => Poll::Ready(Start::Flowing),
                Some(End::Failed(reason)) => Poll::Ready(Start::Failed(reason.clone())),
                None => {
                    state.reader_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The next piece, or the end (`None`), or the writer's failure.
    fn poll_piece(&mut self, cx: Option<&mut Context<'_>>) -> Poll<Option<io::Result<Bytes>>> {
        let mut state = self.shared.lock();
        if let Some(piece) = state.queue.pop_front() {
            state.queued -= piece.len();
            self.shared.wake(state);
            return Poll::Ready(Some(Ok(piece)));
        }
        match &state.end {
            Some(End::Finished) => Poll::Ready(None),
            Some(End::Failed(reason)) => Poll::Ready(Some(Err(io::Error::other(reason.clone())))),
            None => {
                if let Some(cx) = cx {
                    state.reader_waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut state = self.shared.lock();
        loop {
            if let Some(front) = state.queue.front_mut() {
                let n = front.len().min(buf.len());
                let piece = front.split_to(n);
                if front.is_empty() {
                    state.queue.pop_front();
                }
                state.queued -= n;
                if let Some(dst) = buf.get_mut(..n) {
                    dst.copy_from_slice(&piece);
                }
                self.shared.wake(state);
                return Ok(n);
            }
            match &state.end {
                Some(End::Finished) => return Ok(0),
                Some(End::Failed(reason)) => return Err(io::Error::other(reason.clone())),
                None => state = self.shared.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}

impl http_body::Body for PipeReader {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.poll_piece(Some(cx)).map(|p| p.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        let state = self.shared.lock();
        state.queue.is_empty() && state.end == Some(End::Finished)
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        self.shared.close_reader();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_ends_carry_bytes_in_order_and_bounded() {
        let (mut w, mut r) = pipe(1000);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            for piece in sent.chunks(777) {
                w.write_all(piece).expect("write");
            }
            w.finish();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).expect("read");
        writer.join().expect("join");
        assert!(got == data);
    }

    #[test]
    fn a_writer_dropped_early_is_an_error_not_an_end() {
        let (mut w, mut r) = pipe(1000);
        w.write_all(b"half").expect("write");
        drop(w);
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).expect_err("truncated stream read as whole");
        assert_eq!(got, b"half");
        assert!(err.to_string().contains("stopped"), "{err}");
    }

    #[test]
    fn a_dropped_reader_stops_a_blocked_writer() {
        let (mut w, r) = pipe(10);
        w.write_all(&[0u8; 10]).expect("first write fits");
        let writer = std::thread::spawn(move || w.write_all(&[1u8; 10]));
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(r);
        let err = writer.join().expect("join").expect_err("write after the reader left");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn async_sender_and_body_reader() {
        use http_body::Body as _;
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            let (mut w, mut r) = pipe(8);
            let send = async move {
                for i in 0..100u8 {
                    w.send(Bytes::from(vec![i; 5])).await.expect("send");
                }
                w.finish();
            };
            let read = async {
                assert_eq!(r.started().await, Start::Flowing);
                let mut got = Vec::new();
                while let Some(frame) = poll_fn(|cx| Pin::new(&mut r).poll_frame(cx)).await {
                    got.extend_from_slice(&frame.expect("frame").into_data().expect("data"));
                }
                got
            };
            let ((), got) = tokio::join!(send, read);
            assert_eq!(got.len(), 500);
            assert!(
                got.chunks(5)
                    .enumerate()
                    .all(|(i, c)| c.iter().all(|&b| b as usize == i))
            );
        });
        let (w, mut r) = pipe(8);
        w.fail("no such image");
        let start = rt.block_on(r.started());
        assert_eq!(start, Start::Failed("no such image".into()));
    }

    #[test]
    fn an_empty_piece_is_not_the_end() {
        // An HTTP body may carry an empty data frame; read as Ok(0) it would pass a cut manifest
        // off as whole.
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (mut w, mut r) = pipe(64);
        rt.block_on(async {
            w.send(Bytes::from_static(b"head")).await.expect("send");
            w.send(Bytes::new()).await.expect("send");
            w.send(Bytes::from_static(b"tail")).await.expect("send");
        });
        drop(w);
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).expect_err("a writer that never finished");
        assert_eq!(got, b"headtail", "{err}");
    }
}
