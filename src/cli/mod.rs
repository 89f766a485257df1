//! The command line beside the operator: `keyturn status` ([`view`]) and the kubectl plugin
//! ([`plugin`]).

pub mod plugin;
pub mod view;
