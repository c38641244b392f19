# bench/lib/apt-root.sh: a private apt root for a benchmark's apt client,
# shared by bench/soak and bench/chaos (sourced, not run).
#
# apt_root DIR: DIR's folders (lists, archives, dpkg status, log) and
# DIR/apt.conf pointing every Dir:: option inside DIR, with no recommends,
# languages, pdiffs, retries, proxies, Contents or DEP-11 targets: apt does
# only what the benchmark asks. The caller writes DIR/etc/apt/sources.list
# and runs apt-get with APT_CONFIG=DIR/apt.conf.
apt_root() {
    local r=$1
    mkdir -p "$r"/etc/apt/{apt.conf.d,preferences.d,trusted.gpg.d} "$r"/var/lib/apt/lists/partial \
        "$r"/var/cache/apt/archives/partial "$r"/var/lib/dpkg "$r"/var/log/apt
    : >"$r/var/lib/dpkg/status"
    cat >"$r/apt.conf" <<EOF
Dir "$r/";
Dir::State "$r/var/lib/apt";
Dir::State::Lists "$r/var/lib/apt/lists";
Dir::State::status "$r/var/lib/dpkg/status";
Dir::Cache "$r/var/cache/apt";
Dir::Cache::Archives "$r/var/cache/apt/archives";
Dir::Etc "$r/etc/apt";
Dir::Etc::Main "$r/etc/apt/apt.conf";
Dir::Etc::Parts "$r/etc/apt/apt.conf.d";
Dir::Etc::SourceList "$r/etc/apt/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::Etc::Preferences "$r/etc/apt/preferences";
Dir::Etc::PreferencesParts "$r/etc/apt/preferences.d";
Dir::Etc::Trusted "$r/etc/apt/trusted.gpg";
Dir::Etc::TrustedParts "$r/etc/apt/trusted.gpg.d";
Dir::Log "$r/var/log/apt";
Debug::NoLocking "true";
APT::Sandbox::User "root";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Install-Recommends "false";
Acquire::Languages "none";
Acquire::Retries "0";
Acquire::PDiffs "false";
Acquire::http::Timeout "30";
Acquire::http::Proxy "DIRECT";
Acquire::https::Proxy "DIRECT";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled "false";
Acquire::IndexTargets::deb::CNF::DefaultEnabled "false";
EOF
}
