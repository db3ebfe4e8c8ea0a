//! Named threads, spawned through one helper and joined in one place.
//!
//! Each stage of a role runs on its own named thread (`poller`, `launcher`, ...). [`Threads::spawn`]
//! names the thread and, when the body returns an error or panics, triggers the shared shutdown so the
//! other threads stop too. [`Threads::join_all`] waits for every thread and reports the first failure
//! with the thread's name, which `main` turns into a clear exit.

use std::thread::JoinHandle;

use crate::shutdown::{Reason, Shutdown};

/// The error a thread body returns.
pub type ThreadResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Why a thread did not finish cleanly.
#[derive(Debug)]
pub enum ThreadError {
    /// The OS refused to create the thread.
    Spawn {
        name: String,
        source: std::io::Error,
    },
    /// The body returned an error.
    Failed { name: String, message: String },
    /// The body panicked.
    Panicked { name: String, message: String },
}

impl std::fmt::Display for ThreadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThreadError::Spawn { name, source } => {
                write!(f, "could not start thread {name}: {source}")
            }
            ThreadError::Failed { name, message } => write!(f, "thread {name} failed: {message}"),
            ThreadError::Panicked { name, message } => {
                write!(f, "thread {name} panicked: {message}")
            }
        }
    }
}

impl std::error::Error for ThreadError {}

/// A group of named threads sharing one shutdown handle.
pub struct Threads {
    shutdown: Shutdown,
    handles: Vec<(String, JoinHandle<Result<(), String>>)>,
}

impl Threads {
    /// An empty group whose failures trigger `shutdown`.
    pub fn new(shutdown: Shutdown) -> Self {
        Threads {
            shutdown,
            handles: Vec::new(),
        }
    }

    /// Spawns `body` on a thread called `name`.
    pub fn spawn<F>(&mut self, name: &str, body: F) -> Result<(), ThreadError>
    where
        F: FnOnce() -> ThreadResult + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        let thread_name = name.to_string();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || match body() {
                Ok(()) => Ok(()),
                Err(error) => {
                    let message = error_chain(error.as_ref());
                    log::error!("thread {thread_name} failed: {message}");
                    shutdown.trigger(Reason::Failed(format!("{thread_name}: {message}")));
                    Err(message)
                }
            })
            .map_err(|source| ThreadError::Spawn {
                name: name.to_string(),
                source,
            })?;
        self.handles.push((name.to_string(), handle));
        Ok(())
    }

    /// Waits for every thread; returns the first failure (in spawn order) after all have stopped.
    pub fn join_all(self) -> Result<(), ThreadError> {
        let mut first = None;
        for (name, handle) in self.handles {
            let outcome = match handle.join() {
                Ok(Ok(())) => continue,
                Ok(Err(message)) => ThreadError::Failed { name, message },
                Err(panic) => {
                    let message = panic_message(panic.as_ref());
                    self.shutdown
                        .trigger(Reason::Failed(format!("{name} panicked: {message}")));
                    ThreadError::Panicked { name, message }
                }
            };
            first.get_or_insert(outcome);
        }
        first.map_or(Ok(()), Err)
    }
}

/// Renders an error and its sources as `outer: inner: innermost`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_failing_thread_stops_the_others_and_is_reported_by_name() {
        let shutdown = Shutdown::new();
        let mut threads = Threads::new(shutdown.clone());
        let waiter = shutdown.clone();
        threads
            .spawn("waiter", move || {
                waiter.wait_timeout(Duration::from_secs(60));
                Ok(())
            })
            .expect("spawn");
        threads
            .spawn("poller", || Err("platform said no".into()))
            .expect("spawn");
        match threads.join_all() {
            Err(ThreadError::Failed { name, message }) => {
                assert_eq!(name, "poller");
                assert_eq!(message, "platform said no");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(shutdown.reason(), Some(Reason::Failed(_))));
    }

    #[test]
    fn a_panicking_thread_is_reported() {
        let shutdown = Shutdown::new();
        let mut threads = Threads::new(shutdown.clone());
        threads
            .spawn("boom", || panic!("invariant broken"))
            .expect("spawn");
        match threads.join_all() {
            Err(ThreadError::Panicked { name, message }) => {
                assert_eq!(
                    (name.as_str(), message.as_str()),
                    ("boom", "invariant broken")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(shutdown.is_triggered());
    }
}
