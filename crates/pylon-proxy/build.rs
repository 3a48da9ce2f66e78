//! Generates the etcd v3 API client (KV, Watch, Lease) from etcd's protocol files in
//! `proto/etcd/`, with protox (a protobuf compiler in Rust) and tonic: no `protoc` on
//! the build machine, so a fresh clone builds with Rust alone.

fn main() {
    println!("cargo:rerun-if-changed=proto/etcd");
    let files = protox::compile(["proto/etcd/rpc.proto"], ["proto/etcd"])
        .expect("etcd's protocol files compile");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(files)
        .expect("the etcd client is generated");
}
