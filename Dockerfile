# hraftd image: compiled in the official Rust image, run on Debian slim as a non-root user.
#
#   docker build -t hraftd .
#   docker run -d -p 127.0.0.1:11000:11000 -v hraftd-data:/data hraftd
#
# docker-compose.yml runs a 3-node cluster from it; docker/test.sh builds and tests both.

FROM rust:1-slim-bookworm AS builder
# RocksDB's bindings need clang (bindgen) and a C++ compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev g++ make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies first, against placeholder sources: this layer (RocksDB's long compile
# among it) is reused until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY store/Cargo.toml store/
COPY httpd/Cargo.toml httpd/
COPY client/Cargo.toml client/
RUN mkdir -p src/bin store/src httpd/src client/src \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > src/bin/hraftd-bench.rs \
 && touch src/lib.rs store/src/lib.rs httpd/src/lib.rs client/src/lib.rs \
 && cargo build --release --locked --bin hraftd \
 && rm -rf src store/src httpd/src client/src

# Then hraftd itself (touched so cargo sees them newer than the placeholders).
COPY src src
COPY store/src store/src
COPY httpd httpd
COPY client/src client/src
RUN find src store/src httpd/src client/src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bin hraftd \
 && cp target/release/hraftd /usr/local/bin/hraftd

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home hraftd \
 && mkdir /data && chown hraftd:hraftd /data
COPY --from=builder /usr/local/bin/hraftd /usr/local/bin/hraftd
USER hraftd
VOLUME /data
# 11000: HTTP API; 12000: Raft peers.
EXPOSE 11000 12000
# hraftd handles SIGTERM itself (stops HTTP, hands off, flushes RocksDB, exits 0), so it
# can run as PID 1 without an init.
STOPSIGNAL SIGTERM
ENTRYPOINT ["hraftd"]
CMD ["-haddr", ":11000", "-raddr", ":12000", "/data"]
