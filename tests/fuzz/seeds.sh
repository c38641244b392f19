#!/usr/bin/env bash
# Writes the seed corpus, a few valid inputs per fuzz target, into
# seeds/<target>/. The files are committed; run this again only after
# changing it. libFuzzer never writes here: the working corpus is
# corpus/<target>/ (ignored), and seeds/<target>/ is passed as a second,
# read-only corpus directory (see README.md).
set -euo pipefail
cd "$(dirname "$0")"
rm -rf seeds
mkdir -p seeds/{wire_decode,wire_extensions,http_request,request_target,lsd_search,release}

# seed TARGET NAME FORMAT: printf %b of FORMAT (so \xNN, \r, \n work).
seed() { printf '%b' "$3" >"seeds/$1/$2"; }

# ---- wire_decode: 4 bytes piece count (big-endian), then peer frames ------
# The 68-byte BEP 3 handshake is not a frame: the connection reads it with
# Handshake::decode (a fixed [u8; 68]) before any frame, so the streams
# here start right after it, with what a peer sends first (a bitfield).
# Frame = 4-byte length (counting the id byte), 1-byte id, payload.
BITFIELD='\x00\x00\x00\x03\x05\xff\xf0'                     # 12 pieces, 0..=11 held
INTERESTED='\x00\x00\x00\x01\x02'
UNCHOKE='\x00\x00\x00\x01\x01'
REQUEST='\x00\x00\x00\x0d\x06\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x40\x00'  # piece 3, 0, 16384
KEEPALIVE='\x00\x00\x00\x00'
seed wire_decode bitfield_request "\x00\x00\x00\x0c${BITFIELD}${UNCHOKE}${INTERESTED}${REQUEST}${KEEPALIVE}"
HAVE='\x00\x00\x00\x05\x04\x00\x00\x00\x07'
PIECE='\x00\x00\x00\x11\x07\x00\x00\x00\x07\x00\x00\x40\x00debtorre'      # 8 data bytes
CANCEL='\x00\x00\x00\x0d\x08\x00\x00\x00\x07\x00\x00\x40\x00\x00\x00\x40\x00'
PORT='\x00\x00\x00\x03\x09\x1a\xe1'                                        # 6881
CHOKE='\x00\x00\x00\x01\x00'
NOT_INTERESTED='\x00\x00\x00\x01\x03'
seed wire_decode have_piece_cancel "\x00\x00\x00\x64${HAVE}${PIECE}${CANCEL}${PORT}${CHOKE}${NOT_INTERESTED}"
# BEP 6 fast messages, a BEP 10 extended handshake and an unknown id (42).
EXT_HS='d1:md6:dt_wipi2e6:ut_pexi1ee1:pi6881e4:reqqi1000e1:v14:debtorrent 0.1e'
EXT_LEN=$(printf '\\x%02x' $((2 + ${#EXT_HS})))
seed wire_decode fast_extended "\x00\x00\x00\x03\x00\x00\x00\x01\x0e\x00\x00\x00\x01\x0f\
\x00\x00\x00\x05\x0d\x00\x00\x00\x02\
\x00\x00\x00\x0d\x10\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x40\x00\
\x00\x00\x00\x05\x11\x00\x00\x00\x00\
\x00\x00\x00${EXT_LEN}\x14\x00${EXT_HS}\
\x00\x00\x00\x03\x2a\x00\x00"

# ---- wire_extensions: BEP 10 payloads (bencode, keys sorted) --------------
seed wire_extensions ext_handshake \
  'd10:debtorrenti1e1:md6:dt_wipi2e6:ut_pexi1ee1:pi6881e4:reqqi1000e1:v14:debtorrent 0.16:yourip4:\xc0\xa8\x01\x02e'
# ut_pex: two IPv4 peers added (with flags), one IPv6 peer added, one IPv4 dropped.
seed wire_extensions ut_pex \
  'd5:added12:\xc0\xa8\x01\x0a\x1a\xe1\x0a\x00\x00\x05\xc8\xd57:added.f2:\x00\x106:added618:\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x1a\xe18:added6.f1:\x007:dropped6:\xc0\xa8\x01\x0b\x1a\xe18:dropped60:e'
seed wire_extensions dt_wip 'd1:ali3ei17ei4096ee1:dli2eee'

# ---- http_request: what apt sends to the front end ------------------------
UA='User-Agent: Debian APT-HTTP/1.3 (2.6.1)\r\n'
seed http_request inrelease "GET /deb.debian.org/debian/dists/bookworm/InRelease HTTP/1.1\r\nHost: localhost:9988\r\nCache-Control: max-age=0\r\nIf-Modified-Since: Sat, 10 May 2025 09:26:23 GMT\r\n${UA}\r\n"
# Two pipelined requests, the second a by-hash index with a Range.
seed http_request pipelined "GET /deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb HTTP/1.1\r\nHost: localhost:9988\r\n${UA}\r\nGET /deb.debian.org/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/0f4e2b1a HTTP/1.1\r\nHost: localhost:9988\r\nRange: bytes=1024-\r\nIf-Range: Sat, 10 May 2025 09:26:23 GMT\r\n${UA}\r\n"
# Proxy mode (Acquire::http::Proxy), HTTP/1.0 HEAD closing the connection.
seed http_request proxy_head "HEAD http://security.debian.org/debian-security/dists/bookworm-security/InRelease HTTP/1.0\r\nHost: security.debian.org\r\nConnection: close\r\n${UA}\r\n"

# ---- request_target: the target of the request line -----------------------
seed request_target url_prefix '/deb.debian.org/debian/dists/bookworm/InRelease'
seed request_target proxy_port 'http://Deb.Debian.ORG:8080/debian/pool/main/h/hello/hello_2.10-3_amd64.deb'
seed request_target https_ipv6_by_hash \
  '/https/[2001:db8::1]:443/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'
seed request_target percent_encoded '/security.debian.org/debian-security/pool/updates/main/o/openssl/libssl3_3.0.15-1%7edeb12u1_amd64.deb'
seed request_target status_json '/status.json'

# ---- lsd_search: BEP 14 datagrams -----------------------------------------
IH1=d2474e86c95b19b8bcfdb92bc12c9d44667cfa36
IH2=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b
seed lsd_search one_hash_cookie "BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\nInfohash: ${IH1}\r\ncookie: 5f2c9a1e\r\n\r\n\r\n"
seed lsd_search two_hashes_lf "BT-SEARCH * HTTP/1.1\nHost: 239.192.152.143:6771\nport: 51413\ninfohash: ${IH1}\nINFOHASH: ${IH2}\n\n"

# ---- release: Release / InRelease -----------------------------------------
H1=5ab3a2f8ff1ac6c4bfb5a1c4e32e1f2a2b2a9d4c1b7b7ee2f1d0c6f8e3a9b4c1
H2=0e1f6c9d3b2a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c
M1=b2a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4
SUMS=" ${H1}  9013450 main/binary-amd64/Packages\n ${H2}  1964040 main/binary-amd64/Packages.xz\n"
seed release release "Origin: Debian\nSuite: stable\nCodename: bookworm\nDate: Sat, 10 May 2025 09:26:23 UTC\nAcquire-By-Hash: yes\nMD5Sum:\n ${M1}  9013450 main/binary-amd64/Packages\nSHA256:\n${SUMS}"
seed release inrelease_clearsigned "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nCodename: bookworm\nSHA256:\n${SUMS}SHA512:\n ${H1}${H2}  1964040 main/binary-amd64/Packages.xz\n-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCgAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n"
