//! Publishing cloud disk images as AMIs (issue "Cloud images").
//!
//! This crate will hold: an EBS direct-API snapshot uploader, idempotent AMI
//! registration with aws-sdk-ec2, and the `qcloud` CLI, tested against a moto
//! server on 127.0.0.1. It is the only crate that depends on the AWS SDK; the
//! `qimg` format crate and the node-side crates never do.
//!
//! Nothing is implemented yet; the crate exists so the workspace has its final shape.
#![deny(missing_docs)]
