//! A real, gpg-signed Debian repository built once per test process:
//! `.deb`s made with `dpkg-deb --build` (several tiny ones, one of 53 KB and
//! one of more than 50 MB), a source package, indexes from `apt-ftparchive`
//! (Packages, .gz, .xz, Sources, .xz, by-hash) and `Release`, signed into
//! `InRelease` and `Release.gpg` with a throwaway key.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{require_tool, run_ok, sha256_file};

pub const SUITE: &str = "stable";
pub const COMPONENT: &str = "main";
/// Name of the package whose .deb is larger than 50 MB.
pub const BIG: &str = "bigpkg";
/// Name of the package whose .deb is about 53 KB (the benchmark's small file).
pub const SMALL: &str = "small";

#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    /// Full version, with epoch if any.
    pub version: String,
    pub arch: String,
    /// Path relative to the repository root, e.g. `pool/main/t/tiny/tiny_1.0_all.deb`.
    pub pool_path: String,
    pub file_name: String,
    pub size: u64,
    pub sha256: String,
    /// The file on disk.
    pub local: PathBuf,
}

#[derive(Debug)]
pub struct Repo {
    /// Private working folder (gpg home, apt-ftparchive caches, keyring).
    pub base: PathBuf,
    /// The folder a mirror serves: holds `dists/` and `pool/`.
    pub root: PathBuf,
    /// Binary OpenPGP keyring for apt's `signed-by`.
    pub keyring: PathBuf,
    /// Binary packages.
    pub packages: Vec<Package>,
    /// Pool files of the source package (`.dsc` first).
    pub sources: Vec<Package>,
}

impl Repo {
    pub fn package(&self, name: &str) -> &Package {
        self.packages
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no package {name} in the test repository"))
    }

    pub fn big(&self) -> &Package {
        self.package(BIG)
    }

    pub fn binary_names(&self) -> Vec<&str> {
        self.packages.iter().map(|p| p.name.as_str()).collect()
    }

    /// Names of all binary packages except the big one.
    pub fn small_names(&self) -> Vec<&str> {
        self.packages
            .iter()
            .filter(|p| p.name != BIG)
            .map(|p| p.name.as_str())
            .collect()
    }

    pub fn all_pool_files(&self) -> impl Iterator<Item = &Package> {
        self.packages.iter().chain(self.sources.iter())
    }

    pub fn by_file_name(&self, file_name: &str) -> Option<&Package> {
        self.all_pool_files().find(|p| p.file_name == file_name)
    }

    pub fn read(&self, p: &Package) -> Vec<u8> {
        std::fs::read(&p.local).unwrap()
    }
}

static REPO: OnceLock<Repo> = OnceLock::new();

extern "C" fn remove_repo_at_exit() {
    if std::env::var_os("DEBTORRENT_E2E_KEEP").is_some() {
        return;
    }
    if let Some(repo) = REPO.get() {
        let _ = std::fs::remove_dir_all(&repo.base);
    }
}

/// The shared repository, built on first use.
pub fn repo() -> &'static Repo {
    REPO.get_or_init(|| {
        let repo = build();
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe {
            libc::atexit(remove_repo_at_exit);
        }
        repo
    })
}

struct Spec {
    name: &'static str,
    version: &'static str,
    arch: &'static str,
    source: Option<&'static str>,
    payload: usize,
}

const SPECS: &[Spec] = &[
    Spec {
        name: "tiny",
        version: "1.0+dfsg-1~bpo1",
        arch: "all",
        source: None,
        payload: 1000,
    },
    Spec {
        name: SMALL,
        version: "2.3-1",
        arch: "amd64",
        source: None,
        payload: 53_400,
    },
    Spec {
        name: "libfoo1",
        version: "0.9~rc1-2",
        arch: "amd64",
        source: Some("foo"),
        payload: 4_000,
    },
    Spec {
        name: "libstd++x1",
        version: "1:2.0-1",
        arch: "amd64",
        source: Some("libstd++x"),
        payload: 2_000,
    },
    Spec {
        name: "fill0",
        version: "1.0-1",
        arch: "all",
        source: None,
        payload: 3_000,
    },
    Spec {
        name: "fill1",
        version: "1.1-1",
        arch: "all",
        source: None,
        payload: 10_001,
    },
    Spec {
        name: "fill2",
        version: "1.2-1",
        arch: "all",
        source: None,
        payload: 17_002,
    },
    Spec {
        name: "fill3",
        version: "1.3-1",
        arch: "all",
        source: None,
        payload: 24_003,
    },
    Spec {
        name: "fill4",
        version: "1.4-1",
        arch: "all",
        source: None,
        payload: 31_004,
    },
    Spec {
        name: "fill5",
        version: "1.5-1",
        arch: "all",
        source: None,
        payload: 38_005,
    },
    Spec {
        name: BIG,
        version: "1.0-1",
        arch: "amd64",
        source: None,
        payload: 52 * 1024 * 1024 + 12_345,
    },
];

fn pool_dir(source: &str) -> String {
    let letter = if source.starts_with("lib") && source.len() > 3 {
        &source[..4]
    } else {
        &source[..1]
    };
    format!("pool/{COMPONENT}/{letter}/{source}")
}

/// Incompressible bytes from xorshift64*, fast and reproducible.
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

fn describe(root: &Path, rel: &str, name: &str, version: &str, arch: &str) -> Package {
    let local = root.join(rel);
    Package {
        name: name.to_string(),
        version: version.to_string(),
        arch: arch.to_string(),
        pool_path: rel.to_string(),
        file_name: rel.rsplit('/').next().unwrap().to_string(),
        size: std::fs::metadata(&local).unwrap().len(),
        sha256: sha256_file(&local).unwrap(),
        local,
    }
}

fn build() -> Repo {
    for (tool, pkg) in [
        ("dpkg-deb", "dpkg"),
        ("apt-ftparchive", "apt-utils"),
        ("gpg", "gnupg"),
        ("gpgconf", "gnupg"),
        ("apt-get", "apt"),
        ("tar", "tar"),
        ("xz", "xz-utils"),
        ("md5sum", "coreutils"),
    ] {
        require_tool(tool, pkg);
    }
    let tmp = tempfile::Builder::new()
        .prefix("dt-e2e-repo.")
        .tempdir()
        .expect("temp dir");
    let base = tmp.keep();
    let root = base.join("repo");
    let work = base.join("work");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&work).unwrap();

    // ---- binary packages
    let mut packages = Vec::new();
    for (i, spec) in SPECS.iter().enumerate() {
        let stage = work.join(format!("stage-{}", spec.name));
        let data_dir = stage.join("usr/share").join(spec.name);
        std::fs::create_dir_all(stage.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut control = format!(
            "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: debtorrent tests <e2e@example.invalid>\n\
             Section: misc\nPriority: optional\n",
            spec.name, spec.version, spec.arch
        );
        if let Some(src) = spec.source {
            let _ = writeln!(control, "Source: {src}");
        }
        let _ = write!(
            control,
            "Description: end-to-end test package {}\n random payload of {} bytes\n",
            spec.name, spec.payload
        );
        std::fs::write(stage.join("DEBIAN/control"), control).unwrap();
        std::fs::write(
            data_dir.join("payload.bin"),
            random_bytes(i as u64 + 1, spec.payload),
        )
        .unwrap();
        let source = spec.source.unwrap_or(spec.name);
        let dir = pool_dir(source);
        std::fs::create_dir_all(root.join(&dir)).unwrap();
        let plain_version = spec
            .version
            .split_once(':')
            .map_or(spec.version, |(_, v)| v);
        let rel = format!("{dir}/{}_{}_{}.deb", spec.name, plain_version, spec.arch);
        let mut cmd = Command::new("dpkg-deb");
        // The big one uncompressed (fast to build); the others gzip -1 so
        // their size is about their random payload (no tar padding).
        let z: &[&str] = if spec.name == BIG {
            &["-Znone"]
        } else {
            &["-Zgzip", "-z1"]
        };
        cmd.arg("--root-owner-group")
            .args(z)
            .arg("--build")
            .arg(&stage)
            .arg(root.join(&rel));
        run_ok(cmd);
        let _ = std::fs::remove_dir_all(&stage);
        packages.push(describe(&root, &rel, spec.name, spec.version, spec.arch));
    }

    // ---- source package foo 0.9~rc1-2 (format 3.0 (quilt))
    let src_dir = pool_dir("foo");
    let src_abs = root.join(&src_dir);
    let orig_name = "foo_0.9~rc1.orig.tar.xz";
    let deb_name = "foo_0.9~rc1-2.debian.tar.xz";
    let dsc_name = "foo_0.9~rc1-2.dsc";
    {
        let t = work.join("srcstage");
        std::fs::create_dir_all(t.join("foo-0.9~rc1/debian/source")).unwrap();
        std::fs::write(t.join("foo-0.9~rc1/README"), "foo, a test source package\n").unwrap();
        std::fs::write(t.join("foo-0.9~rc1/data.bin"), random_bytes(99, 3000)).unwrap();
        std::fs::write(t.join("foo-0.9~rc1/debian/source/format"), "3.0 (quilt)\n").unwrap();
        let mut cmd = Command::new("tar");
        cmd.current_dir(&t)
            .arg("-cJf")
            .arg(src_abs.join(orig_name))
            .args(["--exclude=debian", "foo-0.9~rc1"]);
        run_ok(cmd);
        let mut cmd = Command::new("tar");
        cmd.current_dir(t.join("foo-0.9~rc1"))
            .arg("-cJf")
            .arg(src_abs.join(deb_name))
            .arg("debian");
        run_ok(cmd);
        let _ = std::fs::remove_dir_all(&t);
    }
    let mut files_md5 = String::new();
    let mut files_sha256 = String::new();
    for name in [orig_name, deb_name] {
        let p = src_abs.join(name);
        let size = std::fs::metadata(&p).unwrap().len();
        let mut md5 = Command::new("md5sum");
        md5.arg(&p);
        let md5 = run_ok(md5)
            .stdout
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let _ = writeln!(files_md5, " {md5} {size} {name}");
        let _ = writeln!(files_sha256, " {} {size} {name}", sha256_file(&p).unwrap());
    }
    let dsc = format!(
        "Format: 3.0 (quilt)\nSource: foo\nBinary: libfoo1\nArchitecture: any\nVersion: 0.9~rc1-2\n\
         Maintainer: debtorrent tests <e2e@example.invalid>\nStandards-Version: 4.6.2\n\
         Package-List:\n libfoo1 deb libs optional arch=any\n\
         Checksums-Sha256:\n{files_sha256}Files:\n{files_md5}"
    );
    std::fs::write(src_abs.join(dsc_name), dsc).unwrap();
    let sources = [dsc_name, orig_name, deb_name]
        .iter()
        .map(|n| {
            describe(
                &root,
                &format!("{src_dir}/{n}"),
                "foo",
                "0.9~rc1-2",
                "source",
            )
        })
        .collect();

    // ---- indexes
    let dist = format!("dists/{SUITE}");
    std::fs::create_dir_all(root.join(&dist).join(format!("{COMPONENT}/binary-amd64"))).unwrap();
    std::fs::create_dir_all(root.join(&dist).join(format!("{COMPONENT}/source"))).unwrap();
    let conf = work.join("ftparchive.conf");
    std::fs::write(
        &conf,
        format!(
            "Dir {{ ArchiveDir \"{}\"; CacheDir \"{}\"; }};\n\
             Default {{ Packages::Compress \". gzip xz\"; Sources::Compress \". xz\"; Contents::Compress \"\"; }};\n\
             TreeDefault {{ Directory \"pool/$(SECTION)\"; SrcDirectory \"pool/$(SECTION)\"; Contents \" \"; }};\n\
             Tree \"{dist}\" {{ Sections \"{COMPONENT}\"; Architectures \"amd64 source\"; }};\n",
            root.display(),
            work.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("apt-ftparchive");
    cmd.current_dir(&root).arg("generate").arg(&conf);
    run_ok(cmd);
    let mut cmd = Command::new("apt-ftparchive");
    cmd.current_dir(&root);
    for (k, v) in [
        ("DoByHash", "true"),
        ("Release::Origin", "debtorrent-e2e"),
        ("Release::Label", "debtorrent-e2e"),
        ("Release::Suite", SUITE),
        ("Release::Codename", SUITE),
        ("Release::Architectures", "amd64"),
        ("Release::Components", COMPONENT),
        ("Release::Acquire-By-Hash", "yes"),
        (
            "Release::Description",
            "debtorrent end-to-end test repository",
        ),
    ] {
        cmd.arg("-o").arg(format!("APT::FTPArchive::{k}={v}"));
    }
    cmd.arg("release").arg(&dist);
    let release = run_ok(cmd).stdout;
    assert!(
        release.contains("SHA256:"),
        "apt-ftparchive release printed no SHA256 list:\n{release}"
    );
    std::fs::write(root.join(&dist).join("Release"), &release).unwrap();

    for rel in [
        "main/binary-amd64/Packages",
        "main/binary-amd64/Packages.gz",
        "main/binary-amd64/Packages.xz",
        "main/source/Sources",
        "main/source/Sources.xz",
    ] {
        let p = root.join(&dist).join(rel);
        assert!(p.is_file(), "apt-ftparchive did not write {}", p.display());
        let sha = sha256_file(&p).unwrap();
        let dir = Path::new(rel).parent().unwrap();
        let by_hash = root.join(&dist).join(dir).join("by-hash/SHA256").join(&sha);
        assert!(by_hash.is_file(), "no by-hash file {}", by_hash.display());
        assert!(release.contains(&sha), "Release does not list {rel}");
    }

    // ---- sign with a throwaway key
    let gnupg = work.join("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let gpg = |args: &[&str]| {
        let mut cmd = Command::new("gpg");
        cmd.env("GNUPGHOME", &gnupg)
            .current_dir(root.join(&dist))
            .args(["--batch", "--yes"])
            .args(args);
        run_ok(cmd)
    };
    let uid = "debtorrent e2e archive key <e2e@example.invalid>";
    gpg(&[
        "--passphrase",
        "",
        "--quick-gen-key",
        uid,
        "ed25519",
        "sign",
        "never",
    ]);
    gpg(&[
        "--local-user",
        uid,
        "--clearsign",
        "-o",
        "InRelease",
        "Release",
    ]);
    gpg(&[
        "--local-user",
        uid,
        "--armor",
        "--detach-sign",
        "-o",
        "Release.gpg",
        "Release",
    ]);
    let keyring = work.join("archive-keyring.gpg");
    let export = gpg(&["--export", "--output", keyring.to_str().unwrap()]);
    drop(export);
    let mut kill = Command::new("gpgconf");
    kill.env("GNUPGHOME", &gnupg).args(["--kill", "all"]);
    let _ = super::run_with_timeout(kill, std::time::Duration::from_secs(10));
    assert!(
        std::fs::metadata(&keyring)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "empty keyring"
    );

    Repo {
        base,
        root,
        keyring,
        packages,
        sources,
    }
}
