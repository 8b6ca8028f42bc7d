//! Image IDs as Docker's `ParseAnyReference` reads them: `sha256:<64 hex>` and 64 hex
//! alone name a local image, never the Docker Hub repository `library/sha256`; a
//! mistyped ID is refused instead of being read as that repository with a tag.

use pinion_model::{Error, ImageRef, Reference};

const HEX: &str = "4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";

fn id(input: &str) -> pinion_model::ImageId {
    match ImageRef::parse(input) {
        Ok(ImageRef::Id(id)) => id,
        other => panic!("{input:?} should be an image ID, got {other:?}"),
    }
}

fn refused(input: &str) -> &'static str {
    match ImageRef::parse(input) {
        Err(Error::InvalidReference { reference, reason }) => {
            assert_eq!(reference, input);
            reason
        }
        other => panic!("{input:?} should be refused, got {other:?}"),
    }
}

#[test]
fn a_digest_alone_is_an_image_id_kept_as_written() {
    let written = format!("sha256:{HEX}");
    let parsed = id(&written);
    assert_eq!(parsed.as_str(), written);
    assert_eq!(parsed.digest(), written);
    for other in [format!("sha384:{}", "a".repeat(96)), format!("sha512:{}", "0".repeat(128))] {
        assert_eq!(id(&other).as_str(), other);
    }
}

#[test]
fn sixty_four_hex_alone_is_a_sha256_image_id() {
    let parsed = id(HEX);
    assert_eq!(parsed.as_str(), HEX, "stored as given");
    assert_eq!(parsed.digest(), format!("sha256:{HEX}"));
    assert_eq!(parsed, id(&format!("sha256:{HEX}")), "two spellings of one image");
    assert_ne!(parsed, id(&"f".repeat(64)));
}

#[test]
fn an_image_id_is_never_a_repository() {
    let err = Reference::parse(&format!("sha256:{HEX}")).unwrap_err();
    assert!(err.to_string().contains("an image ID names a local image"), "{err}");
    assert!(Reference::parse(HEX).is_err());
    assert_eq!(ImageRef::parse(&format!("sha256:{HEX}")).unwrap().named(), None);
}

#[test]
fn a_mistyped_image_id_is_refused_not_read_as_library_sha256() {
    let sha256 = "an image ID is sha256: and 64 lowercase hex digits";
    assert_eq!(refused("sha256:short"), sha256);
    assert_eq!(refused("sha256:latest"), sha256);
    assert_eq!(refused(&format!("sha256:{}", &HEX[..63])), sha256);
    assert_eq!(refused(&format!("sha256:{HEX}0")), sha256);
    assert_eq!(refused(&format!("sha256:{}", HEX.to_uppercase())), sha256);
    assert_eq!(refused(&format!("sha256:{HEX}@sha256:{HEX}")), sha256);
    assert!(refused(&format!("sha512:{HEX}")).contains("sha512: 128"));
    // 64 hex with uppercase is neither an ID nor a valid name, as in Go.
    assert_eq!(refused(&HEX.to_uppercase()), "repository name must be lowercase");
}

#[test]
fn names_that_merely_contain_sha256_stay_repositories() {
    for (input, name) in [
        ("sha256", "docker.io/library/sha256"),
        ("library/sha256:v1", "docker.io/library/sha256"),
        ("user/sha256:abc", "docker.io/user/sha256"),
        ("sha256:5000/app", "sha256:5000/app"),
        ("sha256.example.com/app:v1", "sha256.example.com/app"),
        ("nginx:latest", "docker.io/library/nginx"),
    ] {
        match ImageRef::parse(input) {
            Ok(ImageRef::Named(reference)) => assert_eq!(reference.name(), name, "{input}"),
            other => panic!("{input:?} should be a repository reference, got {other:?}"),
        }
    }
    let pinned = format!("nginx@sha256:{HEX}");
    let reference = ImageRef::parse(&pinned).unwrap();
    assert_eq!(reference.named().and_then(Reference::digest), Some(format!("sha256:{HEX}").as_str()));
}
