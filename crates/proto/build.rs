//! Compiles the KMS and key-service protos with protox (pure Rust), so building Coffer needs no system `protoc`.
//!
//! Two passes: the messages and clients with prost's codec, then the servers alone with
//! `coffer_proto::codec::RequestCodec`, which reports an undecodable request as the client's
//! fault (INVALID_ARGUMENT) where prost's codec says INTERNAL. Clients keep prost's codec: an
//! undecodable response is not the caller's fault.

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
        .build_server(false)
        .build_client(true)
        .compile_fds(descriptors.clone())?;

    let servers = std::path::Path::new(&std::env::var("OUT_DIR")?).join("server");
    std::fs::create_dir_all(&servers)?;
    let mut config = tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .codec_path("crate::codec::RequestCodec")
        .out_dir(&servers);
    for (package, module) in [
        (".v2", "crate::v2"),
        (".v1beta1", "crate::v1beta1"),
        (".envelope", "crate::envelope"),
        (".coffer.keyd.v1", "crate::keyd"),
    ] {
        config = config.extern_path(package, module);
    }
    config.compile_fds(descriptors)?;
    Ok(())
}
