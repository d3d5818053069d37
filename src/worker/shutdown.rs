//! A shutdown signal shared by a worker's tasks: set once (by SIGINT/SIGTERM, or when the
//! supervisor disappears), observed by every loop before it takes new work.

use tokio::sync::watch;

/// The sending side, held by whoever decides to stop.
#[derive(Clone)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// The receiving side, cloned into every loop.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger and signal.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger(sender), Shutdown(receiver))
}

impl ShutdownTrigger {
    /// Asks every loop to stop taking work.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// True once shutdown was asked for.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes when shutdown is asked for.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|set| *set).await;
    }

    /// Sleeps for `duration` or until shutdown, whichever comes first.
    pub async fn sleep(&mut self, duration: std::time::Duration) {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = self.wait() => {}
        }
    }
}
