# syntax=docker/dockerfile:1
# Both binaries in one small image, built in release mode.
#   docker build -t ecommerce-pipeline .
# scripts/compose-test.sh builds it and runs the compose set-up on a real
# engine; scripts/test.sh lints it with hadolint.

# --- build --------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS chef
# cargo-chef turns the workspace's manifests into a recipe, so that the
# dependencies (Polars above all: most of the build time) are built in a
# layer of their own, cached until a manifest or the lock file changes.
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
# Stripped binaries: the debug line tables of the release profile stay out of the image.
ENV CARGO_PROFILE_RELEASE_STRIP=true
RUN cargo chef cook --release --locked --recipe-path recipe.json -p streamer -p generator
COPY . .
RUN cargo build --release --locked -p streamer -p generator

# --- runtime ------------------------------------------------------------------
FROM debian:bookworm-slim
# tini runs as PID 1: it forwards SIGTERM to the program (the streamer then
# commits or rolls back its batches in flight) and reaps children.
# ca-certificates: TLS to managed PostgreSQL servers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.* ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && useradd --system --uid 10001 --create-home pipeline \
    && mkdir -p /data /checkpoints \
    && chown 10001:10001 /data /checkpoints
COPY --from=build /src/target/release/streamer /src/target/release/generator /usr/local/bin/
COPY deploy/entrypoint.sh /usr/local/bin/pipeline-entrypoint
# The container starts as root only to adopt the owner of the mounted data
# folder; the entrypoint runs the program as that user (see the script).
WORKDIR /home/pipeline
ENV DATA_DIR=/data CHECKPOINT_DIR=/checkpoints
# The streamer's dashboard, /health and /metrics (HTTP_ADDR=0.0.0.0:9898 to reach it from outside).
EXPOSE 9898
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/pipeline-entrypoint"]
CMD ["streamer"]
