//! Which stored files to delete to get the store under its size limit (pure:
//! the store hands in what it holds, and deletes what this returns).
//!
//! The policy is issue 3's, in this order:
//!
//! 1. Older versions of a package. Only the highest version of each
//!    (package, architecture) is current; apt will not ask for an older one
//!    again unless someone downgrades. Within this group the versions
//!    furthest behind go first (a package's 1.0 before its 2.0 when 3.0 is
//!    current), then least recently used.
//! 2. Files no current torrent lists (`referenced == false`): no peer can
//!    ask for them and apt only would after a downgrade. Least recently
//!    used first.
//! 3. Everything else, least recently used first.
//!
//! It stops as soon as what remains fits, and then keeps every file it had
//! chosen that still fits beside the rest (a package larger than the limit,
//! chosen last, frees room for the small ones chosen before it), so it never
//! deletes a file it could have kept. Every tie ends at the path (then the
//! index), so the same store always gives the same answer, whatever order
//! the rows came in.
//!
//! Versions come from file names, which is all the store is sure to have.
//! Two limits of that, to keep in mind: archive pool names leave out the
//! epoch (`1:0.1` is stored as `foo_0.1_all.deb` and looks older than
//! `foo_2.0_all.deb`), while apt's own cache spells it (`foo_1%3a0.1_...`),
//! so a store should name files one way only; and `.orig` tarballs are
//! shared by several Debian revisions, so they carry no version here (see
//! [`split_pool_name`]).

use std::cmp::Reverse;
use std::collections::HashMap;

use debversion::Version;

/// One file in the store, as the store's database knows it.
pub struct Stored<'a> {
    /// Path or file name; only the part after the last `/` is read.
    pub path: &'a str,
    /// Size in bytes.
    pub size: u64,
    /// Last time apt or a peer read it (any monotonic clock, e.g. Unix
    /// seconds); smaller is older.
    pub last_used: i64,
    /// Whether some current torrent lists the file.
    pub referenced: bool,
}

/// Returns indices into `files` to delete, in deletion order, so that the total size of the
/// remaining files is <= limit. Policy (issue 3): first older versions of a package (a file whose
/// package name and architecture also exist in the store with a higher Debian version: only the
/// highest version of each (package, arch) is "current"), oldest versions first; then files not
/// referenced by any current torrent (`referenced == false`) by least recent use; then the rest by
/// least recent use. Stop as soon as the total is <= limit, then keep every chosen file that still
/// fits. Deterministic (ties broken by path).
#[must_use]
pub fn choose_victims(files: &[Stored<'_>], limit: u64) -> Vec<usize> {
    // u128: a sum of u64 sizes cannot overflow it.
    let mut total: u128 = files.iter().map(|f| u128::from(f.size)).sum();
    let limit = u128::from(limit);
    if total <= limit {
        return Vec::new();
    }
    let behind = versions_behind(files);
    let key = |i: usize| {
        let f = &files[i];
        let group = if behind[i] > 0 {
            0
        } else if !f.referenced {
            1
        } else {
            2
        };
        // Size and flag before the index, so that even two rows for one
        // path come out in the same order whatever order they came in.
        (
            group,
            Reverse(behind[i]),
            f.last_used,
            f.path,
            Reverse(f.size),
            f.referenced,
            i,
        )
    };
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_unstable_by_key(|&i| key(i));
    let mut victims = Vec::new();
    for i in order {
        victims.push(i);
        total -= u128::from(files[i].size);
        if total <= limit {
            break;
        }
    }
    // The last victim may have freed more than the ones before it needed
    // to: a package larger than the limit, fetched last, goes after the
    // small files chosen before it. Keep every earlier victim that still
    // fits, the last chosen (the most wanted) first, so that no victim
    // could have stayed.
    let mut keep = vec![false; victims.len()];
    for k in (0..victims.len().saturating_sub(1)).rev() {
        let size = u128::from(files[victims[k]].size);
        if total + size <= limit {
            total += size;
            keep[k] = true;
        }
    }
    let mut k = 0;
    victims.retain(|_| {
        k += 1;
        !keep[k - 1]
    });
    victims
}

/// For each file, how many distinct higher versions of its (package, arch)
/// the store holds: 0 for current versions and for files without a version.
fn versions_behind(files: &[Stored<'_>]) -> Vec<usize> {
    let mut groups: HashMap<(String, String), Vec<(Version, usize)>> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        let Some((name, version, arch)) = split_pool_name(f.path) else {
            continue;
        };
        // A version dpkg would reject cannot be ranked; LRU rules only.
        let Ok(version) = version.parse::<Version>() else {
            continue;
        };
        groups.entry((name, arch)).or_default().push((version, i));
    }
    let mut behind = vec![0; files.len()];
    for mut group in groups.into_values() {
        group.sort_by(|a, b| b.0.cmp(&a.0));
        let mut rank = 0;
        for k in 1..group.len() {
            // Equal versions (say `1.0` and `1.0-0`, or one file stored
            // twice) share a rank: neither is older than the other.
            if group[k].0 != group[k - 1].0 {
                rank += 1;
            }
            behind[group[k].1] = rank;
        }
    }
    behind
}

/// Splits a pool file name "name_version_arch.deb" (also .udeb; version may contain "%3a" for ':'
/// which must be decoded) into (name, version, arch); None for other files (.dsc, .tar.xz ...), which
/// are then only pruned by the LRU rules. Source files: "name_version.dsc", "name_version.orig.tar.gz",
/// "name_version.debian.tar.xz" -> (name, version, "source") is a plus if easy.
///
/// Details:
/// - A directory part (`pool/main/h/hello/`) is ignored.
/// - `.ddeb` (Ubuntu debug packages) counts as a binary too.
/// - Every `%XX` escape is decoded in all three parts, not only `%3a`: apt
///   also escapes `+` as `%2b`, and a stored `1.0%2bdfsg` must compare as
///   `1.0+dfsg`. A bad escape gives None.
/// - Sources: `.dsc`, `.debian.tar.*`, `.diff.gz` and native `.tar.*` give
///   (name, version, "source"). `.orig.tar.*`, `.orig-COMPONENT.tar.*` and
///   signatures (`.asc`) give None: an orig tarball is named by the upstream
///   version only and is shared by every Debian revision of it, so ranking
///   `1.0` against the current `.dsc`'s `1.0-2` would delete a tarball that
///   the current source still needs.
#[must_use]
pub fn split_pool_name(file_name: &str) -> Option<(String, String, String)> {
    let base = file_name.rsplit_once('/').map_or(file_name, |(_, b)| b);
    for ext in [".deb", ".udeb", ".ddeb"] {
        if let Some(stem) = base.strip_suffix(ext) {
            let mut parts = stem.split('_');
            let (Some(name), Some(version), Some(arch), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            return triple(name, version, arch);
        }
    }
    let (name, version) = source_stem(base)?.split_once('_')?;
    if version.contains('_') {
        return None;
    }
    triple(name, version, "source")
}

/// `name_version` from a source package file name, None for orig tarballs
/// and anything else.
fn source_stem(base: &str) -> Option<&str> {
    if let Some(stem) = base.strip_suffix(".dsc") {
        return Some(stem);
    }
    if let Some(stem) = base.strip_suffix(".diff.gz") {
        return Some(stem);
    }
    let stem = ["gz", "xz", "bz2", "lzma", "zst"]
        .iter()
        .find_map(|c| base.strip_suffix(c)?.strip_suffix(".tar."))?;
    if let Some(stem) = stem.strip_suffix(".debian") {
        return Some(stem);
    }
    // `.orig` or `.orig-COMPONENT` (component names have no dot).
    let is_orig = stem.rfind(".orig").is_some_and(|at| {
        let rest = &stem[at + ".orig".len()..];
        rest.is_empty() || (rest.starts_with('-') && !rest.contains('.'))
    });
    if is_orig {
        return None;
    }
    Some(stem)
}

fn triple(name: &str, version: &str, arch: &str) -> Option<(String, String, String)> {
    let name = percent_decode(name)?;
    let version = percent_decode(version)?;
    let arch = percent_decode(arch)?;
    if name.is_empty() || version.is_empty() || arch.is_empty() {
        return None;
    }
    Some((name, version, arch))
}

/// Decodes `%XX` escapes; None for a bad escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    fn s(path: &str, size: u64, last_used: i64, referenced: bool) -> Stored<'_> {
        Stored {
            path,
            size,
            last_used,
            referenced,
        }
    }

    fn t(n: &str, v: &str, a: &str) -> Option<(String, String, String)> {
        Some((n.into(), v.into(), a.into()))
    }

    #[test]
    fn pool_names() {
        let cases = [
            ("hello_2.10-3_amd64.deb", t("hello", "2.10-3", "amd64")),
            (
                "pool/main/h/hello/hello_2.10-3_amd64.deb",
                t("hello", "2.10-3", "amd64"),
            ),
            (
                "bash_5.2.15-2+b2_amd64.deb",
                t("bash", "5.2.15-2+b2", "amd64"),
            ),
            ("libc6_2.36-9%3a1_i386.deb", t("libc6", "2.36-9:1", "i386")),
            (
                "tzdata_1%3a2024a-0_all.deb",
                t("tzdata", "1:2024a-0", "all"),
            ),
            (
                "tzdata_1%3A2024a-0_all.deb",
                t("tzdata", "1:2024a-0", "all"),
            ),
            (
                "libstdc%2b%2b6_12.2.0-14_amd64.deb",
                t("libstdc++6", "12.2.0-14", "amd64"),
            ),
            ("foo_1.0%2bdfsg-1_all.deb", t("foo", "1.0+dfsg-1", "all")),
            ("di-utils_1.148_amd64.udeb", t("di-utils", "1.148", "amd64")),
            ("hello-dbgsym_1_amd64.ddeb", t("hello-dbgsym", "1", "amd64")),
            ("hello_2.10-3.dsc", t("hello", "2.10-3", "source")),
            ("hello_2.10-3.debian.tar.xz", t("hello", "2.10-3", "source")),
            ("hello_2.10-3.diff.gz", t("hello", "2.10-3", "source")),
            ("base-files_12.4.tar.xz", t("base-files", "12.4", "source")),
            ("base-files_12.4.tar.gz", t("base-files", "12.4", "source")),
            ("hello_2.10.orig.tar.gz", None),
            ("hello_2.10.orig-docs.tar.xz", None),
            ("hello_2.10.orig.tar.gz.asc", None),
            ("hello_2.10-3.dsc.asc", None),
            ("hello_2.10-3_amd64.buildinfo", None),
            ("InRelease", None),
            ("hello.deb", None),
            ("hello_1.deb", None),
            ("hello_1_amd64_x.deb", None),
            ("_1_amd64.deb", None),
            ("hello__amd64.deb", None),
            ("hello_1_.deb", None),
            ("hello_1%3_amd64.deb", None),
            ("hello_1%zz_amd64.deb", None),
            ("hello_1%ff_amd64.deb", None),
            ("hello_1_amd64.deb/", None),
            ("hello.tar.xz", None),
            ("", None),
            ("%", None),
        ];
        for (input, want) in cases {
            assert_eq!(split_pool_name(input), want, "{input}");
        }
    }

    /// Pins the ordering we rely on from the `debversion` crate against
    /// dpkg's own rules (`dpkg --compare-versions`).
    #[test]
    fn version_order_is_dpkgs() {
        let cases = [
            ("1.0~rc1", "1.0", Ordering::Less),
            ("1.0~~", "1.0~", Ordering::Less),
            ("1.0~", "1.0", Ordering::Less),
            ("1:0.1", "2.0", Ordering::Greater),
            ("1.0-1", "1.0-1+b1", Ordering::Less),
            ("2.10-3", "2.9-10", Ordering::Greater),
            ("1.0", "1.0-0", Ordering::Equal),
            ("0:1.0", "1.0", Ordering::Equal),
            ("1.01", "1.1", Ordering::Equal),
            ("1.0a", "1.0", Ordering::Greater),
            ("1.0+dfsg-1", "1.0-1", Ordering::Greater),
            ("1.0.1", "1.0a", Ordering::Greater),
            ("2.36-9+deb12u4", "2.36-9+deb12u10", Ordering::Less),
            ("5.2.15-2+b2", "5.2.15-2", Ordering::Greater),
            ("1.0-1~bpo12+1", "1.0-1", Ordering::Less),
            ("10", "9", Ordering::Greater),
            (
                "99999999999999999999999",
                "99999999999999999999998",
                Ordering::Greater,
            ),
        ];
        for (a, b, want) in cases {
            let (va, vb) = (a.parse::<Version>(), b.parse::<Version>());
            let (Ok(va), Ok(vb)) = (va, vb) else {
                panic!("{a} or {b} did not parse");
            };
            assert_eq!(va.cmp(&vb), want, "{a} vs {b}");
            assert_eq!(vb.cmp(&va), want.reverse(), "{b} vs {a}");
        }
    }

    /// (files, limit, paths expected in deletion order)
    type Case = (
        &'static [(&'static str, u64, i64, bool)],
        u64,
        &'static [&'static str],
    );

    #[test]
    fn victims() {
        const C: &[Case] = &[
            // Already under (or at) the limit: nothing to do.
            (&[], 0, &[]),
            (&[("a_1_all.deb", 10, 0, false)], 10, &[]),
            // Older versions first, the furthest behind first, even if it
            // was used more recently; the current version stays.
            (
                &[
                    ("foo_3.0_all.deb", 10, 1, true),
                    ("foo_2.0_all.deb", 10, 2, true),
                    ("foo_1.0_all.deb", 10, 9, true),
                    ("bar_1_all.deb", 10, 0, false),
                ],
                20,
                &["foo_1.0_all.deb", "foo_2.0_all.deb"],
            ),
            // Stops as soon as it fits.
            (
                &[
                    ("foo_3.0_all.deb", 10, 1, true),
                    ("foo_2.0_all.deb", 10, 2, true),
                    ("foo_1.0_all.deb", 10, 9, true),
                ],
                25,
                &["foo_1.0_all.deb"],
            ),
            // Across packages, equally far behind: least recently used.
            (
                &[
                    ("a_2_all.deb", 1, 0, true),
                    ("a_1_all.deb", 1, 5, true),
                    ("b_2_all.deb", 1, 0, true),
                    ("b_1_all.deb", 1, 3, true),
                ],
                2,
                &["b_1_all.deb", "a_1_all.deb"],
            ),
            // Then unreferenced by LRU, then the rest by LRU; ties by path.
            (
                &[
                    ("r2_1_all.deb", 1, 2, true),
                    ("u2_1_all.deb", 1, 7, false),
                    ("r1_1_all.deb", 1, 1, true),
                    ("u1_1_all.deb", 1, 7, false),
                    ("readme.txt", 1, 0, true),
                ],
                0,
                &[
                    "u1_1_all.deb",
                    "u2_1_all.deb",
                    "readme.txt",
                    "r1_1_all.deb",
                    "r2_1_all.deb",
                ],
            ),
            // Architectures are separate packages; `all` vs `amd64` too.
            (
                &[
                    ("x_2_amd64.deb", 5, 0, true),
                    ("x_1_i386.deb", 5, 1, true),
                    ("x_1_all.deb", 5, 2, true),
                ],
                14,
                &["x_2_amd64.deb"],
            ),
            // Equal versions are both current; an epoch from apt's cache
            // name ranks above the same name without it.
            (
                &[
                    ("p/y_1.0_all.deb", 5, 3, true),
                    ("q/y_1.0-0_all.deb", 5, 4, true),
                    ("z_1%3a0.1_all.deb", 5, 9, true),
                    ("z_2.0_all.deb", 5, 1, true),
                ],
                15,
                &["z_2.0_all.deb"],
            ),
            // Sources rank among themselves; orig tarballs are LRU only.
            (
                &[
                    ("h_1.0-2.dsc", 1, 0, true),
                    ("h_1.0-1.dsc", 1, 5, true),
                    ("h_1.0-1.debian.tar.xz", 1, 5, true),
                    ("h_1.0.orig.tar.gz", 100, 5, true),
                ],
                101,
                &["h_1.0-1.debian.tar.xz", "h_1.0-1.dsc"],
            ),
            // A version dpkg rejects is not ranked.
            (
                &[
                    ("v_1.0_all.deb", 1, 0, true),
                    ("v_!bad_all.deb", 1, 9, true),
                ],
                1,
                &["v_1.0_all.deb"],
            ),
            // A file larger than the limit, used last, goes; the small
            // ones chosen before it stay (issue 3's cache limit in CI: a
            // 50 MB package committed a second after the small ones
            // emptied a 2 MB store).
            (
                &[
                    ("small_1_all.deb", 3, 5, true),
                    ("tiny_1_all.deb", 2, 5, true),
                    ("bigpkg_1_all.deb", 50, 6, true),
                    ("fill_1_all.deb", 4, 5, true),
                ],
                9,
                &["bigpkg_1_all.deb"],
            ),
            // Only as many as fit stay, the most recently used first.
            (
                &[
                    ("a_1_all.deb", 3, 1, true),
                    ("b_1_all.deb", 3, 2, true),
                    ("c_1_all.deb", 3, 3, true),
                    ("big_1_all.deb", 50, 4, true),
                ],
                7,
                &["a_1_all.deb", "big_1_all.deb"],
            ),
            // Sizes near u64::MAX do not overflow.
            (
                &[
                    ("big_1_all.deb", u64::MAX, 0, true),
                    ("big_2_all.deb", u64::MAX, 0, true),
                ],
                u64::MAX,
                &["big_1_all.deb"],
            ),
        ];
        for (n, (rows, limit, want)) in C.iter().enumerate() {
            let files: Vec<Stored<'_>> = rows.iter().map(|&(p, z, l, r)| s(p, z, l, r)).collect();
            let got: Vec<&str> = choose_victims(&files, *limit)
                .into_iter()
                .map(|i| files[i].path)
                .collect();
            assert_eq!(got, *want, "case {n}");
        }
    }

    #[test]
    fn empty_and_everything() {
        let files = [s("a_1_all.deb", 3, 0, true), s("b_1_all.deb", 0, 0, true)];
        assert_eq!(choose_victims(&files, 0).len(), 1);
        assert_eq!(choose_victims(&files, 3), Vec::<usize>::new());
        let all = [s("a", 1, 0, true), s("b", 1, 0, true)];
        assert_eq!(choose_victims(&all, 0), vec![0, 1]);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn file() -> impl Strategy<Value = (String, u64, i64, bool)> {
            (
                "(a|b|c)_(1|1.0|2|2~rc1|1:0.5|1%3a3)_(all|amd64)\\.deb|(a|d)_(1|2)\\.dsc|junk[0-9]",
                0u64..100,
                0i64..5,
                any::<bool>(),
            )
        }

        proptest! {
            #[test]
            fn fits_minimally_and_deterministically(
                raw in proptest::collection::vec(file(), 0..20),
                limit in 0u64..1000,
                seed in any::<u64>(),
            ) {
                let files: Vec<Stored<'_>> =
                    raw.iter().map(|(p, z, l, r)| s(p, *z, *l, *r)).collect();
                let victims = choose_victims(&files, limit);
                let total: u64 = files.iter().map(|f| f.size).sum();
                let freed: u64 = victims.iter().map(|&i| files[i].size).sum();
                // Fits, and every victim was needed: keeping any one of
                // them would not fit.
                prop_assert!(total - freed <= limit);
                for &v in &victims {
                    prop_assert!(total - freed + files[v].size > limit);
                }
                let mut seen = victims.clone();
                seen.sort_unstable();
                seen.dedup();
                prop_assert_eq!(seen.len(), victims.len());

                // The same files in another order give the same victims.
                let mut perm: Vec<usize> = (0..files.len()).collect();
                let mut x = seed | 1;
                for i in (1..perm.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    perm.swap(i, (x % (i as u64 + 1)) as usize);
                }
                let shuffled: Vec<Stored<'_>> =
                    perm.iter().map(|&i| s(files[i].path, files[i].size, files[i].last_used, files[i].referenced)).collect();
                let a: Vec<(&str, u64, i64, bool)> = victims
                    .iter()
                    .map(|&i| (files[i].path, files[i].size, files[i].last_used, files[i].referenced))
                    .collect();
                let b: Vec<(&str, u64, i64, bool)> = choose_victims(&shuffled, limit)
                    .iter()
                    .map(|&i| (shuffled[i].path, shuffled[i].size, shuffled[i].last_used, shuffled[i].referenced))
                    .collect();
                prop_assert_eq!(a, b);
            }
        }
    }
}
