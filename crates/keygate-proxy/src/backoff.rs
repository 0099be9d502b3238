//! The one backoff: waits that double from a first step up to a cap, for every
//! loop that retries the store.

use std::time::Duration;

/// Doubling waits between retries, from `first` up to `max`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits of `first`, twice that, … up to `max`.
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            next: first,
            max: max.max(first),
        }
    }

    /// The wait before the next retry; the one after it is twice as long.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// The wait the next retry would take, without taking it.
    pub(crate) fn peek(&self) -> Duration {
        self.next
    }

    /// Starts again from the first step, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps for the next wait.
    pub(crate) async fn sleep(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(50), ms(300));
        let waits: Vec<_> = (0..5).map(|_| backoff.next_wait()).collect();
        assert_eq!(waits, [ms(50), ms(100), ms(200), ms(300), ms(300)]);
        assert_eq!(backoff.peek(), ms(300));
        backoff.reset();
        assert_eq!(backoff.next_wait(), ms(50));
    }
}
