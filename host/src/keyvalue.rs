//! The host side of `wasi:keyvalue` (store and atomics) and of
//! `tern:llm/store-usage`, over the configured store ([`crate::kv`]): this
//! file only translates. Every function returns two levels: the outer
//! `wasmtime::Result` is a host bug or trap, the inner `Result` is an error
//! the guest handles (a store that cannot be reached is one: the guest
//! treats it as a miss).

use wasmtime::component::Resource;

use crate::bindings::store_usage::{self, BucketUsage};
use crate::bindings::wasi::keyvalue::{atomics, store};
use crate::resources::BucketHandle;
use crate::state::HostState;

fn other(message: String) -> store::Error {
    store::Error::Other(message)
}

impl HostState {
    fn bucket_name(&self, bucket: &Resource<BucketHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(bucket)?.name.clone())
    }
}

impl store::Host for HostState {
    async fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<BucketHandle>, store::Error>> {
        self.store.open_bucket(&identifier);
        Ok(Ok(self.table.push(BucketHandle { name: identifier })?))
    }
}

impl store::HostBucket for HostState {
    async fn get(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let name = self.bucket_name(&bucket)?;
        Ok(self.store.get(&name, &key).await.map_err(other))
    }

    async fn set(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let name = self.bucket_name(&bucket)?;
        Ok(self.store.set(&name, &key, value).await.map_err(other))
    }

    async fn delete(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let name = self.bucket_name(&bucket)?;
        Ok(self.store.delete(&name, &key).await.map_err(other))
    }

    async fn exists(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        let name = self.bucket_name(&bucket)?;
        Ok(self.store.exists(&name, &key).await.map_err(other))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<BucketHandle>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let name = self.bucket_name(&bucket)?;
        Ok(self
            .store
            .list_keys(&name, cursor.unwrap_or(0))
            .await
            .map(|(keys, cursor)| store::KeyResponse { keys, cursor })
            .map_err(other))
    }

    async fn drop(&mut self, bucket: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for HostState {
    async fn increment(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, store::Error>> {
        let name = self.bucket_name(&bucket)?;
        Ok(self.store.increment(&name, &key, delta).await.map_err(other))
    }
}

impl store_usage::Host for HostState {
    async fn usage(&mut self, identifier: String) -> wasmtime::Result<Option<BucketUsage>> {
        Ok(self.store.usage(&identifier).await)
    }
}
