// Package teststorage holds Caddy storage modules for the reready_verify
// tests only, built into bin/caddy-test (scripts/build-caddy.sh test) and
// never into the gateway users build: users bring their own storage.
//
//   - caddy.storage.reready_test_faulty: Caddy's file_system storage whose
//     calls can be made to fail, as a full or broken disk makes them fail,
//     by naming them in a control file.
//   - caddy.storage.reready_test_redis: a storage over Redis with the
//     semantics of the caddy-storage-redis module (pberkel/caddy-storage-redis),
//     written from its documented behaviour: a directory index written
//     before a value and removed before it, listings by modification second
//     then name, locks that expire unless refreshed, no TryLock.
package teststorage
