//! `debtorrent sources --apply`: writes the rewritten sources in place.
//!
//! The text transformation is [`crate::sources`] (pure); this module is the
//! file side of it, and it is careful because these files belong to the
//! admin and a broken one stops apt:
//!
//! - **Nothing half-written.** Every file is read and transformed before any
//!   is written; a file that cannot be read stops the run before a write.
//!   Each write goes to a temporary file beside the target (same folder, so
//!   the same file system), is flushed to disk, gets the original's mode and
//!   owner, and is renamed over the target; then the folder is synced. A
//!   crash leaves either the old or the new file, never a mix. A symlinked
//!   sources file is written through to the file it points at.
//! - **A backup of every change.** Before a file is replaced, its old bytes
//!   are copied to the backup folder (default `/var/backups/debtorrent`) as
//!   `<path with / as _>.<unix seconds>`, never overwriting an earlier
//!   backup. A file that would not change is neither written nor backed up,
//!   so running `--apply` twice is harmless.
//! - **A way back.** `--revert --apply` is the same operation with
//!   [`Rewriter::revert`], the exact inverse of the rewrite: lines the admin
//!   edited in between keep their edits. `--apply` records each daemon URL it
//!   used in `<backup folder>/daemons`, and `--revert --apply` reverts those
//!   as well as `--daemon`, so the package's `prerm` (which runs
//!   `debtorrent sources --revert --apply` with no other option) also undoes
//!   an `--apply --daemon http://localhost:9999`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::sources::{self, Rewriter};

/// Where backups go unless `--backup-dir` says otherwise.
pub const DEFAULT_BACKUP_DIR: &str = "/var/backups/debtorrent";

/// Name of the file (in the backup folder) listing the daemon URLs that
/// `--apply` has written into sources, one a line.
const DAEMONS_FILE: &str = "daemons";

/// apt's sources: `<etc_apt>/sources.list` and `<etc_apt>/sources.list.d/*.{list,sources}`,
/// those that exist, in apt's order.
pub fn default_files(etc_apt: &Path) -> Vec<PathBuf> {
    let mut v = vec![etc_apt.join("sources.list")];
    if let Ok(rd) = fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut extra: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        extra.sort();
        v.extend(extra);
    }
    v.into_iter().filter(|p| p.exists()).collect()
}

/// Which way to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Mirror URLs -> daemon URLs.
    Rewrite,
    /// Daemon URLs -> mirror URLs.
    Revert,
}

/// What happened to one file.
#[derive(Debug)]
pub struct Outcome {
    /// The file as named (before following symlinks).
    pub path: PathBuf,
    /// URIs changed; 0 means the file was left untouched.
    pub changed: usize,
    /// The copy of the old content, if the file was written.
    pub backup: Option<PathBuf>,
    /// The rewriter's warnings for this file.
    pub warnings: Vec<String>,
}

/// One file, read and transformed, not yet written.
struct Planned {
    path: PathBuf,
    real: PathBuf,
    old: String,
    new: String,
    changed: usize,
    warnings: Vec<String>,
}

/// Rewrites (or reverts) `files` in place against `daemon`, backing each
/// changed file up into `backup_dir` first. See the module docs.
pub fn apply(
    files: &[PathBuf],
    daemon: &str,
    dir: Direction,
    backup_dir: &Path,
) -> anyhow::Result<Vec<Outcome>> {
    check_daemon(daemon)?;
    let daemons = match dir {
        Direction::Rewrite => vec![daemon.to_owned()],
        Direction::Revert => {
            let mut v = vec![daemon.to_owned()];
            for d in recorded_daemons(backup_dir)? {
                if !v.iter().any(|x| same_daemon(x, &d)) {
                    v.push(d);
                }
            }
            v
        }
    };

    // Read and transform everything first: a missing or unreadable file
    // stops the run before anything is written.
    let mut plans = Vec::with_capacity(files.len());
    for path in files {
        let real =
            fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))?;
        let old =
            fs::read_to_string(&real).with_context(|| format!("cannot read {}", real.display()))?;
        let fmt = sources::format_for_path(path);
        let (mut text, mut changed, mut warnings) = (old.clone(), 0, Vec::new());
        for d in &daemons {
            let rw = Rewriter { daemon: d.clone() };
            let out = match dir {
                Direction::Rewrite => rw.rewrite(&text, fmt.clone()),
                Direction::Revert => rw.revert(&text, fmt.clone()),
            };
            text = out.text;
            changed += out.changed;
            warnings.extend(out.warnings);
        }
        plans.push(Planned {
            path: path.clone(),
            real,
            old,
            new: text,
            changed,
            warnings,
        });
    }

    if dir == Direction::Rewrite && plans.iter().any(|p| p.changed > 0) {
        record_daemon(backup_dir, daemon)?;
    }

    let mut outcomes = Vec::with_capacity(plans.len());
    for p in plans {
        let backup = if p.changed > 0 && p.new != p.old {
            let b = backup(&p.real, p.old.as_bytes(), backup_dir)?;
            replace_atomically(&p.real, p.new.as_bytes()).with_context(|| {
                format!(
                    "cannot write {} (its old content is in {})",
                    p.real.display(),
                    b.display()
                )
            })?;
            Some(b)
        } else {
            None
        };
        outcomes.push(Outcome {
            path: p.path,
            changed: if backup.is_some() { p.changed } else { 0 },
            backup,
            warnings: p.warnings,
        });
    }
    Ok(outcomes)
}

/// Refuses a daemon URL the rewriter could not use (it would change nothing
/// and only warn, which `--apply` must not pass off as success).
fn check_daemon(daemon: &str) -> anyhow::Result<()> {
    let d = daemon.trim().trim_end_matches('/');
    match d.strip_prefix("http://") {
        Some(rest)
            if !rest.is_empty()
                && !rest.starts_with('/')
                && !rest.contains(|c: char| c.is_ascii_whitespace()) =>
        {
            Ok(())
        }
        _ => bail!("--daemon {daemon:?} is not of the form http://HOST:PORT"),
    }
}

fn same_daemon(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

/// Daemon URLs recorded by earlier `--apply` runs (none if the file is absent).
fn recorded_daemons(backup_dir: &Path) -> anyhow::Result<Vec<String>> {
    let path = backup_dir.join(DAEMONS_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter(|l| check_daemon(l).is_ok())
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn record_daemon(backup_dir: &Path, daemon: &str) -> anyhow::Result<()> {
    if recorded_daemons(backup_dir)?
        .iter()
        .any(|d| same_daemon(d, daemon))
    {
        return Ok(());
    }
    create_backup_dir(backup_dir)?;
    let path = backup_dir.join(DAEMONS_FILE);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", daemon.trim().trim_end_matches('/'))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn create_backup_dir(backup_dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(backup_dir)
        .with_context(|| format!("cannot create backup folder {}", backup_dir.display()))
}

/// `/etc/apt/sources.list.d/x.sources` -> `etc_apt_sources.list.d_x.sources`.
fn backup_name(real: &Path) -> String {
    let s = real.to_string_lossy();
    s.trim_start_matches('/').replace('/', "_")
}

/// Copies `old` into a new file in `backup_dir`, synced, and returns its path.
fn backup(real: &Path, old: &[u8], backup_dir: &Path) -> anyhow::Result<PathBuf> {
    create_backup_dir(backup_dir)?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("{}.{secs}", backup_name(real));
    for n in 0..1000u32 {
        let name = if n == 0 {
            base.clone()
        } else {
            format!("{base}.{n}")
        };
        let path = backup_dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                f.write_all(old)
                    .and_then(|()| f.sync_all())
                    .with_context(|| format!("cannot write backup {}", path.display()))?;
                sync_dir(backup_dir);
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create backup {}", path.display()))
            }
        }
    }
    bail!(
        "too many backups of {} in {} this second",
        real.display(),
        backup_dir.display()
    )
}

/// Replaces `target` with `content`: temp file beside it, same mode and
/// owner, fsync, rename, fsync of the folder.
fn replace_atomically(target: &Path, content: &[u8]) -> anyhow::Result<()> {
    let meta = fs::metadata(target).with_context(|| format!("cannot stat {}", target.display()))?;
    let folder = target
        .parent()
        .with_context(|| format!("{} has no parent folder", target.display()))?;
    let name = target
        .file_name()
        .with_context(|| format!("{} has no file name", target.display()))?;
    // Leading dot and a foreign extension: apt ignores it if it ever sees it.
    let tmp = folder.join(format!(".{}.debtorrent-new", name.to_string_lossy()));
    // A leftover of a crashed run is ours to replace.
    let _ = fs::remove_file(&tmp);
    let result = (|| -> anyhow::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(content)?;
        f.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        let tmeta = f.metadata()?;
        if tmeta.uid() != meta.uid() || tmeta.gid() != meta.gid() {
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))
                .context("cannot give the new file the old one's owner")?;
        }
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, target)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), target.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(folder);
    Ok(())
}

/// Makes a rename durable; failure only weakens durability, so it is ignored.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "# my mirror\ndeb http://deb.debian.org/debian bookworm main\n\
                        deb [signed-by=/k.gpg] https://security.debian.org/debian-security bookworm-security main\n\
                        deb file:/srv/local ./";
    const DEB822: &str =
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n";

    fn backups(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.file_name().is_some_and(|n| n != DAEMONS_FILE));
        v.sort();
        v
    }

    #[test]
    fn apply_then_revert_gives_back_the_bytes_with_backups() {
        let t = tempfile::tempdir().unwrap();
        let etc = t.path().join("etc/apt");
        fs::create_dir_all(etc.join("sources.list.d")).unwrap();
        let list = etc.join("sources.list");
        let d822 = etc.join("sources.list.d/debian.sources");
        fs::write(&list, LIST).unwrap();
        fs::write(&d822, DEB822).unwrap();
        fs::set_permissions(&d822, fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(
            etc.join("sources.list.d/ignored.txt"),
            "deb http://x/ y z\n",
        )
        .unwrap();
        let bdir = t.path().join("backups");

        let files = default_files(&etc);
        assert_eq!(files, vec![list.clone(), d822.clone()]);
        let out = apply(&files, "http://localhost:9988", Direction::Rewrite, &bdir).unwrap();
        assert_eq!(out.iter().map(|o| o.changed).collect::<Vec<_>>(), [2, 1]);
        let now = fs::read_to_string(&list).unwrap();
        assert!(now.contains("deb http://localhost:9988/deb.debian.org/debian bookworm main\n"));
        assert!(now.ends_with("deb file:/srv/local ./"), "{now}");
        assert_eq!(
            fs::metadata(&d822).unwrap().mode() & 0o777,
            0o640,
            "mode kept"
        );
        let b = backups(&bdir);
        assert_eq!(b.len(), 2);
        assert_eq!(
            fs::read_to_string(out[0].backup.as_ref().unwrap()).unwrap(),
            LIST
        );
        assert!(b.iter().any(|p| p
            .to_string_lossy()
            .contains("_etc_apt_sources.list.d_debian.sources.")));

        // Twice is harmless: nothing to change, nothing written or backed up.
        let again = apply(&files, "http://localhost:9988/", Direction::Rewrite, &bdir).unwrap();
        assert!(again.iter().all(|o| o.changed == 0 && o.backup.is_none()));
        assert_eq!(backups(&bdir).len(), 2);

        let back = apply(&files, "http://localhost:9988", Direction::Revert, &bdir).unwrap();
        assert_eq!(back.iter().map(|o| o.changed).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(fs::read_to_string(&list).unwrap(), LIST);
        assert_eq!(fs::read_to_string(&d822).unwrap(), DEB822);
        assert_eq!(backups(&bdir).len(), 4, "the revert is backed up too");
        let leftovers: Vec<_> = fs::read_dir(etc.join("sources.list.d"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "no temp files left");
    }

    #[test]
    fn revert_also_undoes_recorded_daemons_and_keeps_later_edits() {
        let t = tempfile::tempdir().unwrap();
        let list = t.path().join("a.list");
        fs::write(&list, LIST).unwrap();
        let bdir = t.path().join("b");
        apply(
            std::slice::from_ref(&list),
            "http://localhost:9999",
            Direction::Rewrite,
            &bdir,
        )
        .unwrap();
        // The admin adds a line by hand afterwards; the revert keeps it.
        let mut now = fs::read_to_string(&list).unwrap();
        now.push_str("\ndeb http://example.org/extra stable main\n");
        fs::write(&list, &now).unwrap();
        // What prerm runs: the default daemon URL only.
        let out = apply(
            std::slice::from_ref(&list),
            "http://localhost:9988",
            Direction::Revert,
            &bdir,
        )
        .unwrap();
        assert_eq!(out[0].changed, 2);
        let text = fs::read_to_string(&list).unwrap();
        assert!(!text.contains("localhost"), "{text}");
        assert_eq!(
            text,
            format!("{LIST}\ndeb http://example.org/extra stable main\n")
        );
    }

    #[test]
    fn symlinks_are_written_through_and_errors_write_nothing() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real.list");
        let link = t.path().join("link.list");
        fs::write(&real, LIST).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let bdir = t.path().join("b");
        // A missing file stops the run before anything is written.
        let missing = t.path().join("missing.list");
        let err = apply(
            &[link.clone(), missing],
            "http://localhost:9988",
            Direction::Rewrite,
            &bdir,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("missing.list"), "{err:#}");
        assert_eq!(fs::read_to_string(&real).unwrap(), LIST);
        assert!(!bdir.exists());

        apply(
            std::slice::from_ref(&link),
            "http://localhost:9988",
            Direction::Rewrite,
            &bdir,
        )
        .unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(fs::read_to_string(&real)
            .unwrap()
            .contains("localhost:9988"));
    }

    #[test]
    fn bad_daemon_urls_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let list = t.path().join("a.list");
        fs::write(&list, LIST).unwrap();
        for bad in [
            "localhost:9988",
            "https://localhost:9988",
            "http://",
            "http:///x",
            "",
        ] {
            let r = apply(
                std::slice::from_ref(&list),
                bad,
                Direction::Rewrite,
                t.path(),
            );
            assert!(r.is_err(), "{bad:?}");
        }
        assert_eq!(fs::read_to_string(&list).unwrap(), LIST);
    }
}
