//! A private, gpg-signed repository (its own temp folder and throwaway key)
//! whose suites are published — and republished in place — from chosen
//! pool files, for the dt2 tests (one swarm per Origin, suite family and
//! component; docs/torrent-format.md §7). The pool is filled with the shared
//! fixture's `.deb`s (hard-linked, or copied when linking fails) and with
//! extra packages built here with `dpkg-deb`. Each suite's `Packages` (plain,
//! .gz, .xz) comes from `apt-ftparchive generate` with a `FileList` (so a
//! suite lists exactly the files it is given), its `Release` from
//! `apt-ftparchive release` with `DoByHash` and the Origin, Suite and
//! Codename asked for, signed into `InRelease` and `Release.gpg`.
//!
//! Binary packages only (no `Sources`): use
//! [`super::apt::AptClient::with_suites`] with `deb_src: false`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::repo::{Package, Repo, COMPONENT};
use super::{require_tool, run_ok, run_with_timeout, sha256_file};

pub struct SuiteRepo {
    tmp: Option<tempfile::TempDir>,
    /// The folder a mirror serves: holds `dists/` and `pool/`.
    pub root: PathBuf,
    /// Binary OpenPGP keyring for apt's `signed-by`.
    pub keyring: PathBuf,
    /// The Release `Origin` of every suite published here.
    pub origin: String,
    /// Every pool file placed in the repository so far.
    pub pool: Vec<Package>,
    work: PathBuf,
    gnupg: PathBuf,
}

const KEY_UID: &str = "debtorrent e2e dt2 archive key <e2e-dt2@example.invalid>";

impl SuiteRepo {
    /// An empty repository in a fresh temp folder (`dt-e2e-TAG.XXXX`) with
    /// its own signing key; every suite published gets Release `Origin:
    /// origin`.
    pub fn new(tag: &str, origin: &str) -> SuiteRepo {
        for (tool, pkg) in [
            ("dpkg-deb", "dpkg"),
            ("apt-ftparchive", "apt-utils"),
            ("gpg", "gnupg"),
            ("gpgconf", "gnupg"),
        ] {
            require_tool(tool, pkg);
        }
        let tmp = tempfile::Builder::new()
            .prefix(&format!("dt-e2e-{tag}."))
            .tempdir()
            .expect("temp dir for a private repository");
        let root = tmp.path().join("repo");
        let work = tmp.path().join("work");
        let gnupg = work.join("gnupg");
        for d in [&root, &work, &gnupg] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700))
                .expect("chmod 700 the gpg home");
        }
        let keyring = work.join("archive-keyring.gpg");
        let repo = SuiteRepo {
            tmp: Some(tmp),
            root,
            keyring,
            origin: origin.to_string(),
            pool: Vec::new(),
            work,
            gnupg,
        };
        repo.gpg(
            &repo.work,
            &[
                "--passphrase",
                "",
                "--quick-gen-key",
                KEY_UID,
                "ed25519",
                "sign",
                "never",
            ],
        );
        let keyring = repo.keyring.to_str().expect("keyring path is UTF-8");
        repo.gpg(&repo.work, &["--export", "--output", keyring]);
        repo.kill_gpg_agent();
        let len = std::fs::metadata(&repo.keyring).map_or(0, |m| m.len());
        assert!(len > 0, "empty keyring {}", repo.keyring.display());
        repo
    }

    fn gpg(&self, cwd: &Path, args: &[&str]) {
        let mut cmd = Command::new("gpg");
        cmd.env("GNUPGHOME", &self.gnupg)
            .current_dir(cwd)
            .args(["--batch", "--yes"])
            .args(args);
        run_ok(cmd);
    }

    fn kill_gpg_agent(&self) {
        let mut kill = Command::new("gpgconf");
        kill.env("GNUPGHOME", &self.gnupg).args(["--kill", "all"]);
        let _ = run_with_timeout(kill, Duration::from_secs(10));
    }

    /// Places the fixture's binary packages `names` in this pool (same pool
    /// paths, same bytes) and returns them, `local` pointing here.
    pub fn link_from(&mut self, fixture: &Repo, names: &[&str]) -> Vec<Package> {
        let mut out = Vec::new();
        for name in names {
            let src = fixture.package(name);
            let dst = self.root.join(&src.pool_path);
            if !dst.is_file() {
                let dir = dst.parent().expect("a pool path has a folder");
                std::fs::create_dir_all(dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                if std::fs::hard_link(&src.local, &dst).is_err() {
                    std::fs::copy(&src.local, &dst).unwrap_or_else(|e| {
                        panic!("copy {} to {}: {e}", src.local.display(), dst.display())
                    });
                }
            }
            let mut p = src.clone();
            p.local = dst;
            self.remember(&p);
            out.push(p);
        }
        out
    }

    /// Builds a binary package with `dpkg-deb` (gzip -1; `payload` bytes of
    /// random data from `seed`, so the `.deb` is about that size and differs
    /// from every other package) into `pool/main/<letter>/<name>/`.
    pub fn build_deb(
        &mut self,
        name: &str,
        version: &str,
        arch: &str,
        payload: usize,
        seed: u64,
    ) -> Package {
        let stage = self.work.join(format!("stage-{name}-{version}"));
        let data_dir = stage.join("usr/share").join(name);
        for d in [stage.join("DEBIAN"), data_dir.clone()] {
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        let control = format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\n\
             Maintainer: debtorrent tests <e2e@example.invalid>\nSection: misc\n\
             Priority: optional\nDescription: end-to-end dt2 test package {name}\n \
             random payload of {payload} bytes (seed {seed})\n"
        );
        std::fs::write(stage.join("DEBIAN/control"), control).expect("write DEBIAN/control");
        std::fs::write(data_dir.join("payload.bin"), random_bytes(seed, payload))
            .expect("write the payload");
        let letter = if name.starts_with("lib") && name.len() > 3 {
            &name[..4]
        } else {
            &name[..1]
        };
        let plain_version = version.split_once(':').map_or(version, |(_, v)| v);
        let rel = format!("pool/{COMPONENT}/{letter}/{name}/{name}_{plain_version}_{arch}.deb");
        let local = self.root.join(&rel);
        let dir = local.parent().expect("a pool path has a folder");
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let mut cmd = Command::new("dpkg-deb");
        cmd.arg("--root-owner-group")
            .args(["-Zgzip", "-z1", "--build"])
            .arg(&stage)
            .arg(&local);
        run_ok(cmd);
        let _ = std::fs::remove_dir_all(&stage);
        let p = Package {
            name: name.to_string(),
            version: version.to_string(),
            arch: arch.to_string(),
            pool_path: rel.clone(),
            file_name: rel.rsplit('/').next().unwrap_or(&rel).to_string(),
            size: std::fs::metadata(&local)
                .unwrap_or_else(|e| panic!("{}: {e}", local.display()))
                .len(),
            sha256: sha256_file(&local).unwrap_or_else(|e| panic!("{}: {e}", local.display())),
            local,
        };
        self.remember(&p);
        p
    }

    fn remember(&mut self, p: &Package) {
        if !self.pool.iter().any(|q| q.pool_path == p.pool_path) {
            self.pool.push(p.clone());
        }
    }

    /// Writes (or rewrites, in place) `dists/<suite>/`: `Packages` listing
    /// exactly `packages` for amd64 in component `main`, and a `Release`
    /// with this repository's Origin, `Suite: suite`, `Codename: codename`
    /// and by-hash, signed into `InRelease` and `Release.gpg`. Returns the
    /// SHA-256 of the plain `Packages`.
    pub fn publish(&self, suite: &str, codename: &str, packages: &[Package]) -> String {
        let dist = format!("dists/{suite}");
        let bin = format!("{COMPONENT}/binary-amd64");
        let dist_abs = self.root.join(&dist);
        let bin_abs = dist_abs.join(&bin);
        std::fs::create_dir_all(&bin_abs)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", bin_abs.display()));
        for p in packages {
            assert!(
                self.root.join(&p.pool_path).is_file(),
                "publish {suite}: {} is not in the pool",
                p.pool_path
            );
        }

        // ---- Packages (plain, .gz, .xz) from exactly these files
        let tag = suite.replace('/', "_");
        let list = self.work.join(format!("{tag}.files"));
        let files: String = packages
            .iter()
            .map(|p| format!("{}\n", p.pool_path))
            .collect();
        std::fs::write(&list, files).expect("write the file list");
        let conf = self.work.join(format!("{tag}.conf"));
        std::fs::write(
            &conf,
            format!(
                "Dir {{ ArchiveDir \"{}\"; CacheDir \"{}\"; }};\n\
                 Default {{ Packages::Compress \". gzip xz\"; Contents::Compress \"\"; }};\n\
                 TreeDefault {{ Directory \"pool/$(SECTION)\"; Contents \" \"; }};\n\
                 Tree \"{dist}\" {{ Sections \"{COMPONENT}\"; Architectures \"amd64\"; \
                 FileList \"{}\"; }};\n",
                self.root.display(),
                self.work.display(),
                list.display()
            ),
        )
        .expect("write the apt-ftparchive config");
        let mut cmd = Command::new("apt-ftparchive");
        cmd.current_dir(&self.root).arg("generate").arg(&conf);
        run_ok(cmd);
        let packages_file = bin_abs.join("Packages");
        let text = std::fs::read_to_string(&packages_file)
            .unwrap_or_else(|e| panic!("apt-ftparchive wrote no {}: {e}", packages_file.display()));
        let listed: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("Filename: "))
            .collect();
        let wanted: BTreeSet<&str> = packages.iter().map(|p| p.pool_path.as_str()).collect();
        assert_eq!(
            listed,
            wanted,
            "publish {suite}: {} does not list exactly the files asked for",
            packages_file.display()
        );

        // ---- Release, by-hash, signatures (the old ones go first so the
        // new Release never lists or signs a stale one)
        for f in ["Release", "InRelease", "Release.gpg"] {
            let _ = std::fs::remove_file(dist_abs.join(f));
        }
        let mut cmd = Command::new("apt-ftparchive");
        cmd.current_dir(&self.root);
        for (k, v) in [
            ("DoByHash", "true"),
            ("Release::Origin", self.origin.as_str()),
            ("Release::Label", self.origin.as_str()),
            ("Release::Suite", suite),
            ("Release::Codename", codename),
            ("Release::Architectures", "amd64"),
            ("Release::Components", COMPONENT),
            ("Release::Acquire-By-Hash", "yes"),
            (
                "Release::Description",
                "debtorrent dt2 end-to-end repository",
            ),
        ] {
            cmd.arg("-o").arg(format!("APT::FTPArchive::{k}={v}"));
        }
        cmd.arg("release").arg(&dist);
        let release = run_ok(cmd).stdout;
        let sha = sha256_file(&packages_file)
            .unwrap_or_else(|e| panic!("{}: {e}", packages_file.display()));
        assert!(
            release.contains(&sha) && release.contains(&format!("Codename: {codename}\n")),
            "publish {suite}: the Release does not list Packages {sha} or Codename {codename}:\n\
             {release}"
        );
        let by_hash = bin_abs.join("by-hash/SHA256").join(&sha);
        assert!(by_hash.is_file(), "no by-hash file {}", by_hash.display());
        std::fs::write(dist_abs.join("Release"), &release).expect("write Release");
        self.gpg(
            &dist_abs,
            &[
                "--local-user",
                KEY_UID,
                "--clearsign",
                "-o",
                "InRelease",
                "Release",
            ],
        );
        self.gpg(
            &dist_abs,
            &[
                "--local-user",
                KEY_UID,
                "--armor",
                "--detach-sign",
                "-o",
                "Release.gpg",
                "Release",
            ],
        );
        self.kill_gpg_agent();
        sha
    }

    /// A [`Repo`] value over this repository with `packages` as its binary
    /// packages, for the apt helpers (`update_and_fetch`, `verify_archives`
    /// look packages up in it by name and file name).
    pub fn view(&self, packages: &[Package]) -> Repo {
        Repo {
            base: self.root.parent().unwrap_or(&self.root).to_path_buf(),
            root: self.root.clone(),
            keyring: self.keyring.clone(),
            packages: packages.to_vec(),
            sources: Vec::new(),
        }
    }
}

impl Drop for SuiteRepo {
    fn drop(&mut self) {
        self.kill_gpg_agent();
        if std::env::var_os("DEBTORRENT_E2E_KEEP").is_some() {
            if let Some(tmp) = self.tmp.take() {
                eprintln!("---- kept private repository {}", tmp.keep().display());
            }
        }
    }
}

/// Incompressible bytes from xorshift64* (the same generator as the shared
/// fixture's; pass seeds it does not use, i.e. above 100).
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The names of `packages`, in order.
pub fn names(packages: &[Package]) -> Vec<&str> {
    packages.iter().map(|p| p.name.as_str()).collect()
}

/// Their total size in bytes.
pub fn total_size(packages: &[Package]) -> u64 {
    packages.iter().map(|p| p.size).sum()
}
