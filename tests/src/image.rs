//! Real images pushed without docker: a config blob (architecture, os, rootfs.diff_ids)
//! and one gzipped tar layer, uploaded with the blob upload API (`POST …/blobs/uploads/`
//! then `PUT <location>&digest=`), then the manifest — Docker v2 or OCI — and, for
//! multi-arch tags, a Docker manifest list or an OCI index over two platform images.
//! Every digest returned is the sha256 of the exact bytes PUT, and is checked against
//! the `Docker-Content-Digest` the registry answers.

use crate::client::RegistryClient;
use crate::registry::Registry;
use crate::util::sha256_digest;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};
use std::io::Write;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One platform image: its platform and the bytes of its single file. Different
/// `content` gives a different image (and digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub arch: String,
    pub os: String,
    pub variant: Option<String>,
    pub content: Vec<u8>,
}

impl ImageSpec {
    pub fn new(arch: &str, os: &str, content: impl AsRef<[u8]>) -> ImageSpec {
        ImageSpec { arch: arch.into(), os: os.into(), variant: None, content: content.as_ref().to_vec() }
    }

    pub fn linux_amd64(content: impl AsRef<[u8]>) -> ImageSpec {
        ImageSpec::new("amd64", "linux", content)
    }

    pub fn linux_arm64(content: impl AsRef<[u8]>) -> ImageSpec {
        ImageSpec::new("arm64", "linux", content)
    }

    pub fn linux_arm_v7(content: impl AsRef<[u8]>) -> ImageSpec {
        ImageSpec { variant: Some("v7".into()), ..ImageSpec::new("arm", "linux", content) }
    }

    fn platform(&self) -> Value {
        let mut p = json!({"architecture": self.arch, "os": self.os});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

/// Which manifest format a single image is pushed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// `application/vnd.docker.distribution.manifest.v2+json`
    Docker,
    /// `application/vnd.oci.image.manifest.v1+json`
    Oci,
}

/// A manifest (or list/index) now stored in a registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// sha256 of `bytes`, equal to what the registry answered.
    pub digest: String,
    pub media_type: String,
    /// The exact bytes PUT.
    pub bytes: Vec<u8>,
    pub size: usize,
}

/// A manifest list or OCI index and the platform manifests it points at.
#[derive(Debug, Clone)]
pub struct PushedList {
    pub list: Pushed,
    /// In the order given, each with the spec it was made from.
    pub children: Vec<(ImageSpec, Pushed)>,
}

impl PushedList {
    pub fn digest(&self) -> &str {
        &self.list.digest
    }

    pub fn child_digests(&self) -> Vec<String> {
        self.children.iter().map(|(_, p)| p.digest.clone()).collect()
    }
}

/// Pushes `spec` as a Docker v2 image to `registry` as `repo:tag`; returns its digest.
pub fn push_image(registry: &Registry, repo: &str, tag: &str, spec: &ImageSpec) -> String {
    push_image_as(registry, repo, tag, spec, ManifestFormat::Docker).digest
}

/// Pushes `spec` in `format` to `registry` as `repo:tag`.
pub fn push_image_as(registry: &Registry, repo: &str, tag: &str, spec: &ImageSpec, format: ManifestFormat) -> Pushed {
    let client = RegistryClient::for_registry(registry);
    let pushed = push_platform_image(&client, repo, spec, format);
    put_manifest(&client, repo, tag, &pushed.media_type, &pushed.bytes);
    pushed
}

/// Pushes one Docker v2 image per spec (by digest), then a Docker manifest list over
/// them as `repo:tag`.
pub fn push_manifest_list(registry: &Registry, repo: &str, tag: &str, children: &[ImageSpec]) -> PushedList {
    push_list(registry, repo, tag, children, ManifestFormat::Docker)
}

/// Pushes one OCI image per spec (by digest), then an OCI index over them as `repo:tag`.
pub fn push_oci_index(registry: &Registry, repo: &str, tag: &str, children: &[ImageSpec]) -> PushedList {
    push_list(registry, repo, tag, children, ManifestFormat::Oci)
}

fn push_list(registry: &Registry, repo: &str, tag: &str, specs: &[ImageSpec], format: ManifestFormat) -> PushedList {
    let client = RegistryClient::for_registry(registry);
    let mut children = Vec::new();
    for spec in specs {
        let pushed = push_platform_image(&client, repo, spec, format);
        put_manifest(&client, repo, &pushed.digest, &pushed.media_type, &pushed.bytes);
        children.push((spec.clone(), pushed));
    }
    let media_type = match format {
        ManifestFormat::Docker => DOCKER_MANIFEST_LIST,
        ManifestFormat::Oci => OCI_INDEX,
    };
    let manifests: Vec<Value> = children
        .iter()
        .map(|(spec, p)| {
            json!({"mediaType": p.media_type, "size": p.size, "digest": p.digest, "platform": spec.platform()})
        })
        .collect();
    let list = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests});
    let bytes = serde_json::to_vec_pretty(&list).expect("json");
    let pushed = finish(media_type, bytes);
    put_manifest(&client, repo, tag, media_type, &pushed.bytes);
    PushedList { list: pushed, children }
}

/// Uploads the config and layer blobs of `spec` and returns the (not yet PUT) manifest.
fn push_platform_image(client: &RegistryClient, repo: &str, spec: &ImageSpec, format: ManifestFormat) -> Pushed {
    let tar = tar_with_one_file("content.txt", &spec.content);
    let layer = gzip(&tar);
    let mut config = json!({
        "architecture": spec.arch,
        "os": spec.os,
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&tar)]},
        "history": [{"created_by": "pinion-tests harness"}],
    });
    if let Some(v) = &spec.variant {
        config["variant"] = json!(v);
    }
    let config = serde_json::to_vec(&config).expect("json");
    let config_digest = upload_blob(client, repo, &config);
    let layer_digest = upload_blob(client, repo, &layer);
    let (media_type, config_type, layer_type) = match format {
        ManifestFormat::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER),
        ManifestFormat::Oci => (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER),
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "size": config.len(), "digest": config_digest},
        "layers": [{"mediaType": layer_type, "size": layer.len(), "digest": layer_digest}],
    });
    finish(media_type, serde_json::to_vec_pretty(&manifest).expect("json"))
}

fn finish(media_type: &str, bytes: Vec<u8>) -> Pushed {
    Pushed { digest: sha256_digest(&bytes), media_type: media_type.into(), size: bytes.len(), bytes }
}

/// Monolithic blob upload: `POST /v2/<repo>/blobs/uploads/` → 202 + Location, then
/// `PUT <Location>&digest=<digest>` with the bytes → 201.
pub fn upload_blob(client: &RegistryClient, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let start = client.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], None);
    assert_eq!(start.status, 202, "starting a blob upload to {repo}: {} {}", start.status, start.text());
    let location = start.header("Location").expect("upload Location header").to_string();
    let separator = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{separator}digest={digest}");
    let done = client.request("PUT", &url, &[("Content-Type", "application/octet-stream")], Some(bytes));
    assert_eq!(done.status, 201, "finishing the blob upload of {digest} to {repo}: {} {}", done.status, done.text());
    digest
}

/// `PUT /v2/<repo>/manifests/<reference>`; checks the registry agrees on the digest.
pub fn put_manifest(client: &RegistryClient, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
    let reply = client.request(
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        Some(bytes),
    );
    assert_eq!(reply.status, 201, "PUT manifest {repo}:{reference}: {} {}", reply.status, reply.text());
    let expected = sha256_digest(bytes);
    assert_eq!(
        reply.header("Docker-Content-Digest"),
        Some(expected.as_str()),
        "registry digest for {repo}:{reference} differs from sha256 of the bytes PUT"
    );
}

/// A POSIX ustar archive holding one regular file.
pub fn tar_with_one_file(name: &str, content: &[u8]) -> Vec<u8> {
    assert!(name.len() < 100, "tar name too long");
    let mut header = [0u8; 512];
    let mut put = |offset: usize, field: &[u8]| header[offset..offset + field.len()].copy_from_slice(field);
    put(0, name.as_bytes());
    put(100, b"0000644\0"); // mode
    put(108, b"0000000\0"); // uid
    put(116, b"0000000\0"); // gid
    put(124, format!("{:011o}\0", content.len()).as_bytes()); // size
    put(136, b"00000000000\0"); // mtime
    put(148, b"        "); // checksum placeholder: spaces while summing
    put(156, b"0"); // regular file
    put(257, b"ustar\0"); // magic
    put(263, b"00"); // version
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());

    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]); // end of archive
    tar
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).expect("gzip to memory");
    encoder.finish().expect("gzip to memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_is_block_aligned_with_valid_checksum() {
        let tar = tar_with_one_file("content.txt", b"hello");
        assert_eq!(tar.len(), 512 + 512 + 1024);
        let mut header = tar[..512].to_vec();
        let stored = u32::from_str_radix(std::str::from_utf8(&header[148..154]).unwrap(), 8).unwrap();
        header[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, header.iter().map(|&b| u32::from(b)).sum::<u32>());
        assert_eq!(&tar[512..517], b"hello");
    }
}
