//! [`Alarm`]: the shell's one timer, a timerfd armed at the tree's next deadline.
//!
//! A tokio sleep of about a second wakes the thread twice: tokio's timer wheel files a far
//! deadline in a coarse slot (64 ms wide, up to 4 s ahead) and wakes at the slot's start to file it
//! finer, then again at the deadline. At one wave per second that was a wake-up for nothing every
//! period. A timerfd wakes once, when the deadline comes. Where no timerfd can be made, the alarm
//! is a tokio sleep.

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// tokio registers raw descriptors; nix's timerfd lends only a borrowed one.
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct Alarm {
    fd: Option<AsyncFd<Timer>>,
    /// The deadline (the tree's milliseconds) the timerfd is armed for, if any: asked again for
    /// the same deadline, the alarm waits on without arming again.
    armed: Option<u64>,
}

impl Default for Alarm {
    fn default() -> Self {
        Self::new()
    }
}

impl Alarm {
    pub fn new() -> Alarm {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(std::io::Error::from)
        .and_then(|fd| {
            // SAFETY: `Timer` owns the timerfd, which stays open, and the same descriptor, until
            // the `AsyncFd` that owns the `Timer` is dropped.
            unsafe { AsyncFd::register_with_interest(Timer(fd), Interest::READABLE) }
                .map_err(std::io::Error::from)
        });
        let fd = match fd {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::debug!(error = %e, "no timerfd; the agent's timer is tokio's");
                None
            }
        };
        Alarm { fd, armed: None }
    }

    /// Resolves when the tree's clock reaches `at` milliseconds, `now` being its time now. The
    /// tree's clock is the wall clock held from going back, so the wait is measured on the
    /// monotonic clock from `now`, as a sleep would be.
    pub async fn until(&mut self, at: u64, now: u64) {
        let wait = at.saturating_sub(now);
        if wait == 0 {
            self.armed = None;
            return;
        }
        let Some(fd) = &self.fd else {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            return;
        };
        if self.armed != Some(at) {
            // A one-shot timer, armed again for each new deadline (arming resets the count of
            // expirations, so an old one that was never read cannot end this wait).
            let when = Expiration::OneShot(TimeSpec::from_duration(Duration::from_millis(wait)));
            if let Err(e) = fd.get_ref().0.set(when, TimerSetTimeFlags::empty()) {
                tracing::debug!(error = %e, "cannot arm the timerfd; sleeping instead");
                self.armed = None;
                tokio::time::sleep(Duration::from_millis(wait)).await;
                return;
            }
            self.armed = Some(at);
        }
        loop {
            let Ok(mut ready) = fd.readable().await else {
                // The runtime is shutting down: nothing is due any more.
                std::future::pending::<()>().await;
                return;
            };
            // Reading takes the expiration; a read that would block means the readiness was an
            // old one, and waiting goes on.
            match ready.try_io(|inner| inner.get_ref().0.wait().map_err(std::io::Error::from)) {
                Ok(_) => {
                    self.armed = None;
                    return;
                }
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn ends_at_its_deadline_and_at_once_for_a_past_one() {
        let mut alarm = Alarm::new();
        assert!(alarm.fd.is_some(), "Linux has timerfds");
        alarm.until(1_020, 1_000).await;
        assert_eq!(alarm.armed, None);
        // A deadline already passed does not arm anything.
        alarm.until(1_000, 1_020).await;
        assert_eq!(alarm.armed, None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_wait_given_up_keeps_its_deadline_armed() {
        let mut alarm = Alarm::new();
        let gave_up = tokio::time::timeout(Duration::from_millis(5), alarm.until(60_000, 0)).await;
        assert!(gave_up.is_err());
        assert_eq!(alarm.armed, Some(60_000));
        // A nearer deadline arms the timer again and ends the wait.
        alarm.until(20, 0).await;
        assert_eq!(alarm.armed, None);
    }
}
