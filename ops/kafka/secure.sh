# shellcheck shell=bash disable=SC2034  # NAME, LISTENERS etc. are read by kafka.sh
# The secured test broker: sourced by ops/kafka.sh when KAFKA_INSTANCE=secure (ops/kafka-secure.sh).
# A second single-node broker, so the PLAINTEXT broker the rest of the suite uses is untouched:
#
#   SSL       127.0.0.1:$KAFKA_SSL_PORT (9094)       TLS, client certificate REQUIRED (mTLS)
#   SASL_SSL  127.0.0.1:$KAFKA_SASL_SSL_PORT (9095)  TLS + SCRAM-SHA-512 / SCRAM-SHA-256, no client cert
#   INTERNAL  127.0.0.1:$KAFKA_PORT (9097)           PLAINTEXT, inter-broker traffic and the
#                                                   readiness probe only (loopback, test broker)
#   CONTROLLER 127.0.0.1:$KAFKA_CONTROLLER_PORT (9096)
#
# Everything a client needs is made at the first start, under $STATE/tls (`rm -rf` it, or the
# whole state dir, to make new ones):
#   ca.pem            the test CA (openssl) that signed the broker and client certificates
#   client.pem        a client certificate (CN=sluice-client) for the SSL listener
#   client.key        its key, encrypted (PKCS#8, AES-256) with $KAFKA_SECURE_KEY_PASSWORD
#   untrusted-ca.pem  a CA that signed nothing: a client trusting only it must refuse the broker
# The broker's keystore and truststore (PKCS#12) are made with keytool, as for a real broker;
# the broker certificate names IP 127.0.0.1 only (no DNS name), so `localhost:9094` fails
# hostname verification while 127.0.0.1:9094 passes.
#
# The SCRAM user ($KAFKA_SECURE_USER / $KAFKA_SECURE_PASSWORD, both mechanisms) is created when
# the storage is formatted (`StorageTool format --add-scram`), i.e. once per state dir.
# All of these are test credentials for a loopback broker; never reuse them.

NAME=kafka-secure
KAFKA_SSL_PORT="${KAFKA_SSL_PORT:-9094}"
KAFKA_SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-9095}"
KAFKA_SECURE_USER="${KAFKA_SECURE_USER:-sluice}"
KAFKA_SECURE_PASSWORD="${KAFKA_SECURE_PASSWORD:-sluice-scram-secret}"
KAFKA_SECURE_KEY_PASSWORD="${KAFKA_SECURE_KEY_PASSWORD:-sluice-key-secret}"
# Keystore/truststore password: the broker's own files, readable only by the broker here.
STORE_PASSWORD=sluice-store-secret
TLS_DIR="$SLUICE_STATE_DIR/$NAME/tls"

LISTENERS="INTERNAL://127.0.0.1:$KAFKA_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT"
INTER_BROKER_LISTENER=INTERNAL
PROTOCOL_MAP="CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL"
PORTS="$KAFKA_PORT $KAFKA_CONTROLLER_PORT $KAFKA_SSL_PORT $KAFKA_SASL_SSL_PORT"

instance_prepare() {
    [ -f "$TLS_DIR/.complete" ] && return 0
    command -v openssl >/dev/null || die "$NAME: openssl not found (apt-get install openssl)"
    command -v keytool >/dev/null || die "$NAME: keytool not found (it comes with the JDK/JRE)"
    log "$NAME: making a test CA, broker keystore/truststore and client certificate in $TLS_DIR"
    local tmp="$TLS_DIR.tmp.$$" start=$SECONDS
    rm -rf "$tmp"
    mkdir -p "$tmp"
    # Made in a temp dir and swapped in, so an interrupted run never leaves half a set. A
    # subshell outside any `if`/`||`, so `set -e` stops it at the first failing command.
    local rc=0
    set +e
    (set -ex; make_certificates "$tmp") >>"$OUTFILE" 2>&1
    rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
        tail -n 20 "$OUTFILE" >&2
        rm -rf "$tmp"
        die "$NAME: making certificates failed (log: $OUTFILE)"
    fi
    rm -rf "$TLS_DIR"
    mv "$tmp" "$TLS_DIR"
    log "$NAME: certificates made in $((SECONDS - start))s"
}

# make_certificates DIR — the files listed at the top of this file, plus the broker's stores.
make_certificates() {
    local d="$1" days=3650
    # The CA.
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" -subj "/CN=sluice test CA" \
        -keyout "$d/ca.key" -out "$d/ca.pem"
    # The broker's key pair in its keystore, a signing request, the CA's signature, then the
    # chain (CA first, so keytool can link the reply) back into the keystore.
    keytool -genkeypair -keystore "$d/broker.p12" -storetype PKCS12 -storepass "$STORE_PASSWORD" \
        -alias broker -keyalg RSA -keysize 2048 -validity "$days" -dname "CN=127.0.0.1" -ext "SAN=IP:127.0.0.1"
    keytool -certreq -keystore "$d/broker.p12" -storepass "$STORE_PASSWORD" -alias broker -file "$d/broker.csr"
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$d/broker.ext"
    openssl x509 -req -sha256 -days "$days" -in "$d/broker.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
        -CAcreateserial -extfile "$d/broker.ext" -out "$d/broker.pem"
    keytool -importcert -noprompt -keystore "$d/broker.p12" -storepass "$STORE_PASSWORD" -alias ca -file "$d/ca.pem"
    keytool -importcert -noprompt -keystore "$d/broker.p12" -storepass "$STORE_PASSWORD" -alias broker -file "$d/broker.pem"
    # The truststore: the CA whose client certificates the SSL listener accepts.
    keytool -importcert -noprompt -keystore "$d/truststore.p12" -storetype PKCS12 -storepass "$STORE_PASSWORD" \
        -alias ca -file "$d/ca.pem"
    # The client: an encrypted key (so clients exercise the key password) and a certificate.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -aes-256-cbc \
        -pass "pass:$KAFKA_SECURE_KEY_PASSWORD" -out "$d/client.key"
    openssl req -new -key "$d/client.key" -passin "pass:$KAFKA_SECURE_KEY_PASSWORD" -subj "/CN=sluice-client" -out "$d/client.csr"
    printf 'extendedKeyUsage=clientAuth\n' >"$d/client.ext"
    openssl x509 -req -sha256 -days "$days" -in "$d/client.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
        -CAcreateserial -extfile "$d/client.ext" -out "$d/client.pem"
    # A CA that signed nothing here.
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" -subj "/CN=sluice untrusted CA" \
        -keyout "$d/untrusted-ca.key" -out "$d/untrusted-ca.pem"
    rm -f "$d"/*.csr "$d"/*.ext "$d/untrusted-ca.key"
    touch "$d/.complete"
}

instance_properties() {
    cat <<PROPS
# The secured listeners (ops/kafka/secure.sh).
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/broker.p12
ssl.keystore.password=$STORE_PASSWORD
ssl.truststore.type=PKCS12
ssl.truststore.location=$TLS_DIR/truststore.p12
ssl.truststore.password=$STORE_PASSWORD
listener.name.ssl.ssl.client.auth=required
listener.name.sasl_ssl.ssl.client.auth=none
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
}

instance_format_args() {
    local mechanism
    for mechanism in SCRAM-SHA-512 SCRAM-SHA-256; do
        printf '%s\n' --add-scram "$mechanism=[name=$KAFKA_SECURE_USER,password=$KAFKA_SECURE_PASSWORD]"
    done
}
