# syntax=docker/dockerfile:1
# Atlas Codex worker image.
#   docker build -t atlas-codex:$(git rev-parse --short HEAD) .
#   docker run --rm -e OPENAI_API_KEY atlas-codex:<tag> --stage preview worker
# The Helm chart mounts the stage's config over /etc/atlas-codex; the copy baked in here makes the
# image usable on its own (e.g. `validate --all-stages`).

# ---------------------------------------------------------------- build
FROM rust:1.95-bookworm AS builder
WORKDIR /build

# 1. Dependencies only: build the locked dependency graph against placeholder sources, so this
#    layer is reused until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && echo '' > src/lib.rs \
 && cargo build --release --locked --no-default-features \
 && rm -rf src

# 2. The real crate. demo/ is compiled in (include_str! in src/demo.rs).
COPY src ./src
COPY demo ./demo
# Forget the placeholder build of this crate (COPY keeps the sources' old mtimes, which could look
# older than the placeholder's artefacts), then build for real.
RUN rm -rf target/release/.fingerprint/atlas-codex-* target/release/deps/atlas_codex-* \
           target/release/deps/libatlas_codex-* target/release/atlas-codex* target/release/libatlas_codex* \
 && cargo build --release --locked --no-default-features --bin atlas-codex \
 && install -m 0755 target/release/atlas-codex /usr/local/bin/atlas-codex

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 atlas \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/atlas-codex --create-home \
      --shell /usr/sbin/nologin atlas

COPY --from=builder /usr/local/bin/atlas-codex /usr/local/bin/atlas-codex
COPY config/ /etc/atlas-codex/

# Config layers are read from here (default.toml + {stage}.toml); the chart mounts its ConfigMap here.
ENV ATLAS_CONFIG_DIR=/etc/atlas-codex
# The working directory is writable by the worker user (stage `local` keeps ./atlas-data here).
WORKDIR /var/lib/atlas-codex
USER 10001:10001

# Admin server: /metrics, /healthz, /readyz (admin.listen, default 0.0.0.0:10090).
EXPOSE 10090
ENTRYPOINT ["/usr/local/bin/atlas-codex"]
CMD ["worker"]
