//! Wire types for the Kubernetes KMS plugin APIs.
//!
//! Generated at build time from the `.proto` files in `proto/` with protox, so no system `protoc`
//! is needed. Field numbers follow `k8s.io/kms` exactly; kube-apiserver is the peer.

#![allow(clippy::all, missing_docs)]

pub mod codec;
pub mod framing;

/// `v2.KeyManagementService`: the current KMS API (Kubernetes 1.29+, `v2beta1` status in 1.27/1.28).
pub mod v2 {
    tonic::include_proto!("v2");
    include!(concat!(env!("OUT_DIR"), "/server/v2.rs"));
}

/// `v1beta1.KeyManagementService`: the deprecated KMS v1 API, still configured by older clusters.
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");
    include!(concat!(env!("OUT_DIR"), "/server/v1beta1.rs"));
}

/// `coffer.keyd.v1.KeyService`: the Coffer key service's API.
pub mod keyd {
    tonic::include_proto!("coffer.keyd.v1");
    include!(concat!(env!("OUT_DIR"), "/server/coffer.keyd.v1.rs"));
}

/// The API server's etcd envelope (`EncryptedObject`), needed for disaster recovery.
pub mod envelope {
    tonic::include_proto!("envelope");
}
