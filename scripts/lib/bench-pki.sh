# Sourced by the TLS benchmarks: `make_pki DIR` writes an ECDSA P-256 CA (DIR/ca.pem) and a
# server certificate for 127.0.0.1 signed by it (DIR/server.pem, DIR/server.key) with openssl,
# installing openssl with apt-get when missing (run as root). Nothing here is kept: the
# benchmarks make them in their temporary directory.
make_pki() {
    command -v openssl > /dev/null || { apt-get update -qq && apt-get install -y -qq openssl > /dev/null; }
    (
        cd "$1"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=weir bench CA" -keyout ca.key -out ca.pem \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2> /dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
            -keyout server.key -out server.csr 2> /dev/null
        printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -out server.pem -extfile ext 2> /dev/null
    )
}
