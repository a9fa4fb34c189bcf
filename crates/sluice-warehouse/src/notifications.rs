//! Change notifications: a warehouse that can announce changes (PostgreSQL's `LISTEN`/`NOTIFY`)
//! lets a model run at once instead of at its next interval.
//!
//! What a [`Notifications`] stream guarantees: it yields the channel name of each notification
//! received on a channel it listens to, for as long as it is held; a dropped connection is
//! re-established by the backend (PostgreSQL: after 2 s, logged), so the stream itself never ends
//! while held. What it does not: notifications sent while the connection is down are lost. That
//! is acceptable because a notification only *advances* a run: the model's own schedule still
//! polls, so a lost one delays a change to the next interval and loses nothing.
//!
//! Dropping the stream stops listening (the backend's task and connection end).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A warehouse that can wake models when their data changes. The default says it cannot, so a
/// warehouse without the capability states it with an empty `impl` (the config refuses
/// `notify_channel` for it at load).
pub trait ChangeNotifications {
    /// Listen on `channels` (each at most once); `None` when this warehouse cannot notify.
    fn notifications(&self, channels: &[String]) -> Option<Notifications> {
        let _ = channels;
        None
    }
}

/// The channel names of notifications as they arrive (see the module docs).
#[derive(Debug)]
pub struct Notifications {
    channels: mpsc::UnboundedReceiver<String>,
    listener: JoinHandle<()>,
}

impl Notifications {
    /// Spawn `listener`, which sends each received channel name on the sender it is given and
    /// runs until that sender reports [`closed`](mpsc::UnboundedSender::closed) (the stream was
    /// dropped).
    pub(crate) fn spawn<F>(listener: impl FnOnce(mpsc::UnboundedSender<String>) -> F) -> Notifications
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (sender, channels) = mpsc::unbounded_channel();
        Notifications { channels, listener: tokio::spawn(listener(sender)) }
    }
}

impl futures::Stream for Notifications {
    type Item = String;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        self.channels.poll_recv(cx)
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        // The listener would notice the closed channel on its own; aborting ends it even while
        // it waits to reconnect.
        self.listener.abort();
    }
}
