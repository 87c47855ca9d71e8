//! The host side of `wasi:config/store`: the app layer's settings and
//! secrets (`App::setting`, `App::settings`).

use crate::bindings::config_store::{self, Error};
use crate::state::HostState;

impl config_store::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, Error>> {
        Ok(Ok(self.app.setting(&key)))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, Error>> {
        Ok(Ok(self.app.settings()))
    }
}
