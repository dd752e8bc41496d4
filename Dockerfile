# Both binaries in one small image. Build: docker build -t ecommerce-pipeline .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p streamer -p generator

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --create-home pipeline
COPY --from=build /src/target/release/streamer /src/target/release/generator /usr/local/bin/
USER pipeline
WORKDIR /home/pipeline
CMD ["streamer"]
