# shellcheck shell=bash
# bench/lib/nginx.sh: an nginx config for a benchmark's mirror (sourced,
# not run).
#
# nginx_conf DIR SERVER: writes DIR/nginx.conf (pid, logs and temp folders
# under DIR; sendfile, tcp_nopush, tcp_nodelay; an access log of
# "$uri $body_bytes_sent $status" lines in DIR/access.log, from which a
# benchmark sums the bytes the mirror sent) with SERVER as the body of its
# one `server { }` block. Start it with
# `nginx -c DIR/nginx.conf -p DIR`.
nginx_conf() {
    local dir=$1 server=$2
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF2
user root;
worker_processes 2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 2048; }
http {
    log_format bytes '\$uri \$body_bytes_sent \$status';
    access_log $dir/access.log bytes;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    default_type application/octet-stream;
    server {
$server
    }
}
EOF2
}
