# syntax=docker/dockerfile:1
#
# One image for every sluice process: `sluice-poller`, `sluice-sink` and the `sluice` CLI.
# The image has no ENTRYPOINT: whoever runs it (docker-compose.yml, Kubernetes) names the
# command, e.g. `sluice-sink --config /etc/sluice/sluice.toml --destination crm-webhook`.
#
#   docker build -t sluice:local .

# ---------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# rdkafka is built with `cmake-build` (librdkafka compiled from source): cmake, plus the
# development headers librdkafka's build looks for. libssl-dev: the `ssl` feature links the
# system OpenSSL (TLS and SASL/SCRAM to the brokers); no libsasl2 (SCRAM is librdkafka's own).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        cmake \
        libcurl4-openssl-dev \
        libssl-dev \
        zlib1g-dev \
        pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The whole workspace: cargo needs every member's manifest (integration-tests included) even
# when building only a few packages, and sluice-avro embeds schemas/ at compile time.
COPY . .

# DuckDB (the embedded warehouse) is compiled in; its C++ makes the first build long (about 20
# minutes on 2 cores). The registry and target dir are BuildKit cache mounts, so rebuilds after a source change
# recompile only sluice itself. A cache mount is not part of the image, so the binaries are
# copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p sluice-poller -p sluice-sink -p sluice-cli \
        --features sluice-cli/duckdb,sluice-poller/duckdb \
 && mkdir -p /out \
 && install -m 0755 target/release/sluice-poller target/release/sluice-sink target/release/sluice /out/

# ---------------------------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates: TLS to warehouses, brokers and destinations (the trust store a `[kafka] tls`
# without `ca_file` uses). libssl3: the OpenSSL librdkafka links (Debian's, so security updates
# come with the base image). curl: container healthchecks
# (`curl -fsS http://localhost:9464/readyz`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid sluice --home-dir /opt/sluice --no-create-home \
        --shell /usr/sbin/nologin sluice

COPY --from=builder /out/sluice-poller /out/sluice-sink /out/sluice /usr/local/bin/
COPY schemas/ /opt/sluice/schemas/

# The working directory belongs to the service user: `sluice schema export` writes
# schemas/models/ there and a DuckDB warehouse file may live there. (On Kubernetes the root
# filesystem is read-only; mount a volume where a service must write.)
RUN chown 10001:10001 /opt/sluice
WORKDIR /opt/sluice
# Numeric, so orchestrators enforcing runAsNonRoot can verify it.
USER 10001:10001

# Ops endpoints (/healthz, /readyz, /metrics) of the poller (9464) and of a sink (9465); the
# poller's POST /run/<model> (9466).
EXPOSE 9464 9465 9466

CMD ["sluice", "--help"]
