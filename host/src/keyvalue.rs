//! The host side of `wasi:keyvalue` (store and atomics) and of
//! `tern:llm/store-usage`, over the memory store ([`crate::kv_store`]): this
//! file only translates. Every function returns two levels: the outer
//! `wasmtime::Result` is a host bug or trap, the inner `Result` is an error
//! the guest handles.

use std::sync::Arc;

use wasmtime::component::Resource;

use crate::bindings::store_usage::{self, BucketUsage};
use crate::bindings::wasi::keyvalue::{atomics, store};
use crate::kv_store::KvStore;
use crate::resources::BucketHandle;
use crate::state::HostState;

fn other(message: String) -> store::Error {
    store::Error::Other(message)
}

impl HostState {
    fn bucket_name(&self, bucket: &Resource<BucketHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(bucket)?.name.clone())
    }

    fn kv(&self) -> &Arc<KvStore> {
        &self.store
    }
}

impl store::Host for HostState {
    fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<BucketHandle>, store::Error>> {
        self.kv().open(&identifier);
        Ok(Ok(self.table.push(BucketHandle { name: identifier })?))
    }
}

impl store::HostBucket for HostState {
    fn get(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let name = self.bucket_name(&bucket)?;
        Ok(Ok(self.kv().get(&name, &key)))
    }

    fn set(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let name = self.bucket_name(&bucket)?;
        Ok(self.kv().set(&name, &key, value).map_err(other))
    }

    fn delete(&mut self, bucket: Resource<BucketHandle>, key: String) -> wasmtime::Result<Result<(), store::Error>> {
        let name = self.bucket_name(&bucket)?;
        self.kv().delete(&name, &key);
        Ok(Ok(()))
    }

    fn exists(&mut self, bucket: Resource<BucketHandle>, key: String) -> wasmtime::Result<Result<bool, store::Error>> {
        let name = self.bucket_name(&bucket)?;
        Ok(Ok(self.kv().exists(&name, &key)))
    }

    fn list_keys(
        &mut self,
        bucket: Resource<BucketHandle>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let name = self.bucket_name(&bucket)?;
        let (keys, cursor) = self.kv().list_keys(&name, cursor.unwrap_or(0));
        Ok(Ok(store::KeyResponse { keys, cursor }))
    }

    fn drop(&mut self, bucket: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for HostState {
    fn increment(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, store::Error>> {
        let name = self.bucket_name(&bucket)?;
        Ok(self.kv().increment(&name, &key, delta).map_err(other))
    }
}

impl store_usage::Host for HostState {
    fn usage(&mut self, identifier: String) -> wasmtime::Result<Option<BucketUsage>> {
        Ok(self.kv().usage(&identifier))
    }
}
