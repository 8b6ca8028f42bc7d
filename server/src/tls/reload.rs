//! Renewed certificate files are served without a restart (certbot renews every 60 days;
//! a restart would cut every device's connection): a thread looks at both files'
//! identity (device, inode, size, modification time, through symlinks as certbot's
//! `live/` has them) every `CHECK_EVERY`, and once a change has stood still for one look
//! (a renewal replaces two files one after the other; a copy writes a file in pieces),
//! reads and checks them as at start. New handshakes get the new certificate, open
//! connections keep theirs. A renewal that does not load (unparseable, the key of
//! another certificate, expired) leaves the old one served, and the log says why, once
//! per change. Once a day the log also says when the served certificate nears its end.

use super::files::{load, TlsFiles};
use super::x509::{CertificateFacts, Standing};
use crate::timefmt::unix_now;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How often the files are looked at: two `stat` calls.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often a certificate near its end (or past it) is logged.
const REMIND_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The certificate every new handshake gets.
#[derive(Debug)]
pub struct CurrentCertificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CurrentCertificate {
    pub fn new(certified: Arc<CertifiedKey>) -> CurrentCertificate {
        CurrentCertificate { current: RwLock::new(certified) }
    }

    fn replace(&self, certified: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = certified;
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner())))
    }
}

/// What `stat` says of a file that changes when it is rewritten or replaced; `None`
/// while it cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i128,
}

/// The certificate file's and the key file's.
pub type Stamps = (Option<Stamp>, Option<Stamp>);

pub fn stamps(files: &TlsFiles) -> Stamps {
    (stamp(&files.cert), stamp(&files.key))
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        device: meta.dev(),
        inode: meta.ino(),
        size: meta.size(),
        modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    })
}

/// When to load the files again. Pure: stamps in, a yes or no out.
#[derive(Debug)]
pub struct Watch {
    /// The files as they were when what is served was read.
    served: Stamps,
    /// As they were at the last look.
    seen: Stamps,
    /// As they were when they last failed to load.
    failed: Option<Stamps>,
}

impl Watch {
    pub fn new(served: Stamps) -> Watch {
        Watch { served, seen: served, failed: None }
    }

    /// A look at the files: whether to load them (they differ from what is served, and
    /// are as they were at the last look). Files that failed to load are tried again at
    /// every look: a certificate not valid yet becomes valid without changing.
    pub fn look(&mut self, now: Stamps) -> bool {
        let settled = now == self.seen;
        self.seen = now;
        now != self.served && settled
    }

    pub fn loaded(&mut self, stamps: Stamps) {
        self.served = stamps;
        self.failed = None;
    }

    /// Records a failure to load; whether it is news (the first for these files).
    pub fn failed(&mut self, stamps: Stamps) -> bool {
        let news = self.failed != Some(stamps);
        self.failed = Some(stamps);
        news
    }
}

/// Starts the thread that looks at the files and replaces what `current` serves.
pub fn spawn(
    files: TlsFiles,
    current: Arc<CurrentCertificate>,
    provider: Arc<CryptoProvider>,
    served: Stamps,
    facts: CertificateFacts,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("tls-reload".into()).spawn(move || {
        let mut watch = Watch::new(served);
        let mut facts = facts;
        // The start logged a certificate near its end already.
        let mut reminded = Some(Instant::now());
        loop {
            std::thread::sleep(CHECK_EVERY);
            let now_stamps = stamps(&files);
            if watch.look(now_stamps) {
                match load(&files, &provider, unix_now() as i64) {
                    Ok(loaded) => {
                        current.replace(loaded.certified);
                        watch.loaded(now_stamps);
                        log::info!(
                            "https: serving the changed certificate {} ({}) to new connections",
                            files.cert.display(),
                            loaded.facts.describe()
                        );
                        facts = loaded.facts;
                        reminded = None;
                    }
                    Err(error) if watch.failed(now_stamps) => log::error!(
                        "https: the changed certificate files do not load, so the previous certificate \
                         ({}) is still served: {error}",
                        facts.describe()
                    ),
                    Err(_) => {}
                }
            }
            if reminded.is_none_or(|at| at.elapsed() >= REMIND_EVERY) {
                let now = unix_now() as i64;
                match facts.standing(now) {
                    Standing::EndsSoon { .. } => {
                        log::warn!("https: {}: {}", files.cert.display(), facts.warning(now).unwrap_or_default())
                    }
                    Standing::Expired => log::error!(
                        "https: the certificate served ({}) has expired: clients refuse it; renew {}",
                        facts.describe(),
                        files.cert.display()
                    ),
                    Standing::Valid | Standing::NotYetValid => {}
                }
                reminded = Some(Instant::now());
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(inode: u64) -> Option<Stamp> {
        Some(Stamp { device: 1, inode, size: 100, modified_ns: 5 })
    }

    #[test]
    fn a_change_loads_once_it_stood_still_for_one_look() {
        let mut watch = Watch::new((at(1), at(2)));
        assert!(!watch.look((at(1), at(2))), "unchanged");
        // certbot swaps the certificate, then the key.
        assert!(!watch.look((at(3), at(2))), "just changed: wait a look");
        assert!(!watch.look((at(3), at(4))), "changed again");
        assert!(watch.look((at(3), at(4))), "settled");
        watch.loaded((at(3), at(4)));
        assert!(!watch.look((at(3), at(4))), "served now");
    }

    #[test]
    fn a_failed_change_is_tried_at_every_look_and_reported_once() {
        let mut watch = Watch::new((at(1), at(2)));
        assert!(!watch.look((None, at(2))), "the certificate file vanished");
        assert!(watch.look((None, at(2))));
        assert!(watch.failed((None, at(2))), "news");
        assert!(watch.look((None, at(2))), "tried again");
        assert!(!watch.failed((None, at(2))), "not news");
        assert!(!watch.look((at(5), at(2))));
        assert!(watch.look((at(5), at(2))));
        assert!(watch.failed((at(5), at(2))), "another change failing is news");
        // Put back as it was: the same files as served, nothing to load.
        assert!(!watch.look((at(1), at(2))));
        assert!(!watch.look((at(1), at(2))));
    }
}
