//! Compiles the KMS and key-service protos with protox (pure Rust), so building Coffer needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/kms_v2.proto",
        "proto/kms_v1beta1.proto",
        "proto/kms_envelope.proto",
        "proto/keyd.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
