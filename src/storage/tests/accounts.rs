//! The original admin key as the key `admin`: created once, replaced by a new digest (which
//! lifts a revocation), and never in the way of a named key that took its name.

use super::*;
use crate::domain::accounts::{ADMIN_KEY_ID, ApiKey};
use crate::domain::auth::Role;

fn named(id: &str, name: &str) -> ApiKey {
    ApiKey {
        id: id.into(),
        name: name.into(),
        role: Role::Viewer,
        digest: "00".repeat(32),
        expires_at: None,
        created_by: "test".into(),
        created_at: Utc::now(),
        last_used_at: None,
        revoked_at: None,
        owner: None,
    }
}

#[tokio::test]
async fn the_admin_key_is_synced_by_digest_and_a_revocation_holds_until_a_new_digest() {
    let store = memory_store().await;
    store.sync_admin_key(&"aa".repeat(32)).await.unwrap();
    store.sync_admin_key(&"aa".repeat(32)).await.unwrap();
    let (admin, _) = store.find_key(ADMIN_KEY_ID).await.unwrap().unwrap();
    assert_eq!((admin.name.as_str(), admin.role, admin.digest.as_str()), ("admin", Role::Admin, "aa".repeat(32).as_str()));

    assert!(store.revoke_key(ADMIN_KEY_ID).await.unwrap());
    store.sync_admin_key(&"aa".repeat(32)).await.unwrap();
    assert!(store.find_key(ADMIN_KEY_ID).await.unwrap().unwrap().0.revoked_at.is_some(), "the same key stays revoked");

    // A named key takes the free name; a new admin digest is stored, and stays revoked.
    store.insert_key(&named("0123456789abcdef", "admin")).await.unwrap();
    store.sync_admin_key(&"bb".repeat(32)).await.unwrap();
    let (admin, _) = store.find_key(ADMIN_KEY_ID).await.unwrap().unwrap();
    assert!(admin.revoked_at.is_some() && admin.digest == "bb".repeat(32));
    assert_eq!(store.find_key_by_name_or_id("admin").await.unwrap().unwrap().id, "0123456789abcdef");

    // Without that, a new digest lifts the revocation.
    assert!(store.revoke_key("0123456789abcdef").await.unwrap());
    store.sync_admin_key(&"cc".repeat(32)).await.unwrap();
    assert!(store.find_key(ADMIN_KEY_ID).await.unwrap().unwrap().0.revoked_at.is_none());
    let Err(Error::Conflict { code, .. }) = store.insert_key(&named("fedcba9876543210", "admin")).await else {
        panic!("two live keys named admin")
    };
    assert_eq!(code, "key_exists");
}
