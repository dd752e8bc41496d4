# syntax=docker/dockerfile:1
# Both binaries in one small image, built in release mode.
#   docker build -t ecommerce-pipeline .
# Validated by scripts/test.sh with hadolint (no Docker engine needed).

# --- build --------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# Dependencies first, in their own cached layer: only the manifests and the
# lock file are copied, with empty sources, so a change to the code does not
# rebuild Polars and the rest (most of the build time).
COPY Cargo.toml Cargo.lock ./
COPY contract/Cargo.toml contract/
COPY runtime/Cargo.toml runtime/
COPY generator/Cargo.toml generator/
COPY streamer/Cargo.toml streamer/
RUN mkdir -p contract/src runtime/src generator/src streamer/src streamer/benches \
    && touch contract/src/lib.rs runtime/src/lib.rs \
    && echo 'fn main() {}' > generator/src/main.rs \
    && touch generator/src/lib.rs \
    && echo 'fn main() {}' > streamer/src/main.rs \
    && touch streamer/src/lib.rs \
    && echo 'fn main() {}' > streamer/benches/restart.rs \
    && cargo build --release --locked -p streamer -p generator \
    && rm -rf contract/src runtime/src generator/src streamer/src streamer/benches

# Then the project itself (touched, so cargo rebuilds it over the stubs).
COPY db db
COPY contract contract
COPY runtime runtime
COPY generator generator
COPY streamer streamer
RUN find contract runtime generator streamer -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p streamer -p generator

# --- runtime ------------------------------------------------------------------
FROM debian:bookworm-slim
# tini runs as PID 1: it forwards SIGTERM to the streamer (which then commits
# or rolls back its batch in flight) and reaps children.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home pipeline \
    && mkdir -p /data /checkpoints \
    && chown 10001:10001 /data /checkpoints
COPY --from=build /src/target/release/streamer /src/target/release/generator /usr/local/bin/
# A numeric user, so bind mounts can be matched with `user:` in compose.
USER 10001:10001
WORKDIR /home/pipeline
ENV DATA_DIR=/data CHECKPOINT_DIR=/checkpoints
# The streamer's dashboard, /health and /metrics (HTTP_ADDR=0.0.0.0:9898 to reach it from outside).
EXPOSE 9898
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["streamer"]
