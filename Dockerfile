# syntax=docker/dockerfile:1
#
# invoice-dispatch container image: a Rust build stage and a distroless runtime stage.
#
#   docker build -t invoice-dispatch:0.1.0 .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/samples:/data" \
#       invoice-dispatch:0.1.0 send /data/invoices.csv --simulate
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts below.

# ---------------------------------------------------------------------------------------
# Build stage. Debian 12 (bookworm), the same glibc (2.36) as the runtime image, so the
# binary never asks for a newer glibc than the one it runs on. Stable Rust 1.x; pin
# rust:1.95-bookworm (or a digest) for bit-for-bit repeatable builds.
FROM rust:1-bookworm AS build

WORKDIR /src

# Only what `cargo build` reads: the manifest, the lock file, the library and binary
# sources, and the bench (Cargo.toml declares [[bench]] dispatch, and cargo refuses a
# manifest whose declared target file is missing, even when it does not build it).
# config.example.toml is read by a unit test with include_str!; it is copied so the
# crate's sources are complete.
COPY Cargo.toml Cargo.lock config.example.toml ./
COPY src ./src
COPY benches ./benches

# Dependencies are cached with BuildKit cache mounts rather than a dummy-crate layer: the
# crate has a lib, a bin and a bench, and the mounts need no stub files. The registry and
# target/ persist on the builder between builds (a fresh CI builder simply compiles
# everything once). `touch` makes cargo recompile this crate even when a cached target/
# holds artifacts newer than the copied sources' timestamps; the dependencies stay cached.
# --locked: the committed Cargo.lock is the one built, or the build fails.
# The release profile keeps line tables (debug = 1) for perf; the copy in the image is
# stripped of debug info (100 MB -> 18 MB) but keeps its symbols, so panics still name
# functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    touch src/lib.rs src/main.rs \
    && cargo build --release --locked --bin invoice-dispatch \
    && objcopy --strip-debug target/release/invoice-dispatch /invoice-dispatch \
    && /invoice-dispatch --version

# ---------------------------------------------------------------------------------------
# Runtime stage: distroless "cc" for Debian 12, nonroot variant.
# Why this one rather than debian:bookworm-slim:
#   - the binary needs only glibc, libm and libgcc_s (SQLite is compiled in by rusqlite's
#     `bundled`, TLS is rustls: no OpenSSL), which is exactly what the cc image carries;
#   - it has the CA certificates (/etc/ssl/certs) that the PostgreSQL ledger's TLS reads
#     through rustls-native-certs (the myKaarma client uses the roots compiled into the
#     binary, webpki-roots);
#   - it has a `nonroot` user (uid/gid 65532, home /home/nonroot) in /etc/passwd, and no
#     shell, package manager or setuid binaries: less to patch and nothing to exec into.
#     To look inside a running pod use `kubectl debug` with an ephemeral container.
# No tzdata is installed: the time zone database (for send_window/timezone) is compiled
# into the binary by chrono-tz.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="invoice-dispatch" \
      org.opencontainers.image.description="Send myKaarma payment requests in bulk from a CSV, politely and never twice." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT"

COPY --from=build /invoice-dispatch /usr/local/bin/invoice-dispatch
# Every config key with its default; mount the real config.toml beside it (or over the
# folder, as deploy/kubernetes does) and pass --config.
COPY config.example.toml /etc/invoice-dispatch/config.example.toml

# The distroless nonroot user, numerically, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /home/nonroot

# `send` handles SIGTERM (docker stop, Kubernetes) itself: it stops starting requests,
# waits up to shutdown_grace (default 10 s) for those in flight, writes the results and
# exits 130. `simulate` stops on SIGTERM or SIGINT. Neither spawns children, so running
# as PID 1 needs no init.
ENTRYPOINT ["/usr/local/bin/invoice-dispatch"]
CMD ["--help"]
