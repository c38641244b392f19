//! A private apt client: its own root with `etc/apt`, lists, archives and an
//! empty dpkg status, driven through `APT_CONFIG` so nothing of the host's apt
//! configuration (apt.conf.d, sources.list.d, proxies) is read or touched.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::mirror::Mirror;
use super::repo::{Repo, COMPONENT, SUITE};
use super::{run_with_timeout, sha256_file, CmdOutput};

/// How apt reaches the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Straight to the mirror (baseline, no daemon).
    Direct,
    /// `deb http://DAEMON/127.0.0.1:PORT/debian stable main`
    Prefix(SocketAddr),
    /// `deb http://127.0.0.1:PORT/debian stable main` with
    /// `Acquire::http::Proxy "http://DAEMON/"`.
    Proxy(SocketAddr),
}

pub struct AptClient {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub mode: Mode,
    config: PathBuf,
    pub timeout: Duration,
    /// The suites in sources.list (`[SUITE]` for [`AptClient::new`]).
    suites: Vec<String>,
}

/// Lines of apt output that mean the repository signature was not verified.
const SIGNATURE_PROBLEMS: &[&str] = &[
    "NO_PUBKEY",
    "not signed",
    "is not signed",
    "couldn't be verified",
    "could not be verified",
    "BADSIG",
    "no longer signed",
    "InRelease is not valid yet",
    "allow-insecure",
    "Insecure",
];

impl AptClient {
    pub fn new(repo: &Repo, mirror: &Mirror, mode: Mode) -> AptClient {
        AptClient::with_suites(repo, mirror, mode, &[SUITE], true)
    }

    /// A client of `repo` (its keyring) on `mirror` with one `deb` line
    /// (component `main`) per suite in `suites`, and a `deb-src` line after
    /// each when `deb_src`; [`AptClient::new`] is `with_suites(.., &[SUITE],
    /// true)`. A verified update needs an InRelease of every suite.
    pub fn with_suites(
        repo: &Repo,
        mirror: &Mirror,
        mode: Mode,
        suites: &[&str],
        deb_src: bool,
    ) -> AptClient {
        assert!(!suites.is_empty(), "an apt client needs a suite");
        let tmp = tempfile::Builder::new()
            .prefix("dt-e2e-apt.")
            .tempdir()
            .expect("apt temp dir");
        let root = tmp.path().to_path_buf();
        for d in [
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/trusted.gpg.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
            "var/log/apt",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
        let url = match mode {
            Mode::Direct | Mode::Proxy(_) => mirror.base_url(),
            Mode::Prefix(d) => format!("http://{d}/{}{}", mirror.host_port(), mirror.prefix()),
        };
        let keyring = repo.keyring.display();
        let mut sources = String::new();
        for suite in suites {
            sources.push_str(&format!(
                "deb [signed-by={keyring}] {url} {suite} {COMPONENT}\n"
            ));
            if deb_src {
                sources.push_str(&format!(
                    "deb-src [signed-by={keyring}] {url} {suite} {COMPONENT}\n"
                ));
            }
        }
        std::fs::write(root.join("etc/apt/sources.list"), sources).unwrap();
        let r = root.display();
        let proxy = match mode {
            Mode::Proxy(d) => format!("\"http://{d}/\""),
            _ => "\"DIRECT\"".to_string(),
        };
        let config = root.join("apt.conf");
        std::fs::write(
            &config,
            format!(
                r#"Dir "{r}/";
Dir::State "{r}/var/lib/apt";
Dir::State::Lists "{r}/var/lib/apt/lists";
Dir::State::status "{r}/var/lib/dpkg/status";
Dir::Cache "{r}/var/cache/apt";
Dir::Cache::Archives "{r}/var/cache/apt/archives";
Dir::Etc "{r}/etc/apt";
Dir::Etc::Main "{r}/etc/apt/apt.conf";
Dir::Etc::Parts "{r}/etc/apt/apt.conf.d";
Dir::Etc::SourceList "{r}/etc/apt/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::Etc::Preferences "{r}/etc/apt/preferences";
Dir::Etc::PreferencesParts "{r}/etc/apt/preferences.d";
Dir::Etc::Trusted "{r}/etc/apt/trusted.gpg";
Dir::Etc::TrustedParts "{r}/etc/apt/trusted.gpg.d";
Dir::Log "{r}/var/log/apt";
Debug::NoLocking "true";
APT::Sandbox::User "root";
APT::Architecture "amd64";
APT::Architectures {{ "amd64"; }};
APT::Get::List-Cleanup "false";
APT::Install-Recommends "false";
APT::Keep-Downloaded-Packages "true";
Acquire::Languages "none";
Acquire::Retries "0";
Acquire::PDiffs "false";
Acquire::http::Timeout "10";
Acquire::http::Proxy {proxy};
Acquire::https::Proxy "DIRECT";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled "false";
Acquire::IndexTargets::deb::CNF::DefaultEnabled "false";
"#
            ),
        )
        .unwrap();
        AptClient {
            _tmp: tmp,
            root,
            mode,
            config,
            timeout: Duration::from_secs(120),
            suites: suites.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("apt-get");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LANG", "C")
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("APT_CONFIG", &self.config)
            .args(["-q", "-y"])
            .args(args);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> CmdOutput {
        run_with_timeout(self.command(args), self.timeout)
    }

    /// Starts apt-get without waiting (for tests that kill the daemon
    /// mid-run); its output goes to `ROOT/spawned.out` and `.err`.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        let mut cmd = self.command(args);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(self.root.join("spawned.out")).unwrap())
            .stderr(std::fs::File::create(self.root.join("spawned.err")).unwrap());
        cmd.spawn().expect("spawn apt-get")
    }

    /// Output of the last [`AptClient::spawn`]ed run.
    pub fn spawned_output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            std::fs::read_to_string(self.root.join("spawned.out")).unwrap_or_default(),
            std::fs::read_to_string(self.root.join("spawned.err")).unwrap_or_default()
        )
    }

    pub fn update(&self) -> CmdOutput {
        self.run(&["update"])
    }

    pub fn download_only(&self, pkgs: &[&str]) -> CmdOutput {
        let mut args = vec!["install", "--download-only"];
        args.extend_from_slice(pkgs);
        self.run(&args)
    }

    /// `apt-get source --download-only` into this client's root.
    pub fn source_download_only(&self, src: &str) -> CmdOutput {
        let mut cmd = self.command(&["source", "--download-only", src]);
        cmd.current_dir(&self.root);
        run_with_timeout(cmd, self.timeout)
    }

    pub fn archives(&self) -> PathBuf {
        self.root.join("var/cache/apt/archives")
    }

    pub fn lists(&self) -> PathBuf {
        self.root.join("var/lib/apt/lists")
    }

    /// `.deb` files apt placed in its archives folder (not partial/).
    pub fn archived_debs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.archives())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "deb"))
            .collect();
        v.sort();
        v
    }

    /// Every `.deb` in archives/ is byte-identical (SHA256) to the repo's,
    /// and every package in `expected` is there.
    pub fn verify_archives(&self, repo: &Repo, expected: &[&str]) -> Result<(), String> {
        check_debs(&self.archived_debs(), repo)?;
        for name in expected {
            let p = repo.package(name);
            let path = self
                .archives()
                .join(deb_name_in_archives(&p.file_name, &p.version));
            if !path.is_file() {
                return Err(format!(
                    "{} not in {} (have {:?})",
                    path.display(),
                    self.archives().display(),
                    self.archived_debs()
                ));
            }
        }
        Ok(())
    }

    /// apt stored a verified InRelease for the suite (for each suite of a
    /// [`AptClient::with_suites`] client).
    pub fn has_verified_inrelease(&self) -> bool {
        let files = self.list_files();
        self.suites.iter().all(|suite| {
            let tail = format!("_dists_{suite}_InRelease");
            files.iter().any(|f| f.ends_with(&tail))
        })
    }

    /// Files apt stored in its lists folder.
    pub fn list_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.lists())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Asserts `apt-get update` succeeded and the signature was verified.
    pub fn assert_update_verified(&self, out: &CmdOutput, ctx: &str) {
        assert!(
            out.success(),
            "{ctx}: apt-get update failed\n{}",
            out.combined()
        );
        let text = format!("{}\n{}", out.stdout, out.stderr);
        for bad in SIGNATURE_PROBLEMS {
            assert!(
                !text.contains(bad),
                "{ctx}: apt-get update printed {bad:?}\n{}",
                out.combined()
            );
        }
        for line in text.lines() {
            assert!(
                !(line.starts_with("W:") || line.starts_with("E:") || line.starts_with("Err:")),
                "{ctx}: apt-get update warned/failed: {line}\n{}",
                out.combined()
            );
        }
        assert!(
            self.has_verified_inrelease(),
            "{ctx}: no verified InRelease in {} ({:?})",
            self.lists().display(),
            self.list_files()
        );
        assert!(
            self.list_files()
                .iter()
                .any(|f| f.ends_with("_binary-amd64_Packages")),
            "{ctx}: no Packages list stored: {:?}",
            self.list_files()
        );
    }

    /// update + download-only of `pkgs`, asserting success and intact files.
    pub fn update_and_fetch(&self, repo: &Repo, pkgs: &[&str], ctx: &str) {
        let out = self.update();
        self.assert_update_verified(&out, ctx);
        let out = self.download_only(pkgs);
        assert!(
            out.success(),
            "{ctx}: apt-get install --download-only failed\n{}",
            out.combined()
        );
        if let Err(e) = self.verify_archives(repo, pkgs) {
            panic!("{ctx}: {e}\n{}", out.combined());
        }
    }
}

/// apt names a downloaded .deb `NAME_VERSION_ARCH.deb` with the epoch's `:`
/// written as `%3a`; pool names have no epoch.
pub fn deb_name_in_archives(pool_file_name: &str, version: &str) -> String {
    match version.split_once(':') {
        Some((epoch, rest)) => {
            pool_file_name.replacen(&format!("_{rest}_"), &format!("_{epoch}%3a{rest}_"), 1)
        }
        None => pool_file_name.to_string(),
    }
}

/// Each .deb must match a repository package byte for byte.
pub fn check_debs(debs: &[PathBuf], repo: &Repo) -> Result<(), String> {
    for path in debs {
        let fname = path.file_name().unwrap().to_string_lossy().into_owned();
        let pkg = repo
            .packages
            .iter()
            .find(|p| deb_name_in_archives(&p.file_name, &p.version) == fname)
            .ok_or_else(|| format!("unexpected file {} in archives", path.display()))?;
        let got = sha256_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if got != pkg.sha256 {
            return Err(format!(
                "{} is corrupt: sha256 {got}, expected {} (size {} vs {})",
                path.display(),
                pkg.sha256,
                std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                pkg.size
            ));
        }
    }
    Ok(())
}

/// Files in a directory (non-recursive), for diagnostics.
pub fn ls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
