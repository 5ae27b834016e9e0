//! Protobuf through `prost-reflect`: the registry's schema (`.proto` text,
//! compiled by `protox`, or a base64 `FileDescriptorProto`, which some
//! serializers register instead) and its references (imports, by file
//! name) become one descriptor pool per schema id. Google's well-known
//! types are built in. Each record names its message type by its path in
//! the file (see `framing`), is decoded as a dynamic message and written in
//! the canonical proto3 JSON mapping: lowerCamelCase names, 64-bit integers
//! as strings, enums by name, well-known types in their JSON forms,
//! default values left out.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FileDescriptor, MessageDescriptor, SerializeOptions,
};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use super::framing;

/// The name the schema's own file gets when the registry sent text.
const MAIN_FILE: &str = "herald/registry-schema.proto";

/// A compiled Protobuf schema: its file, within a pool holding its imports.
pub struct ProtoSchema {
    file: FileDescriptor,
}

impl std::fmt::Debug for ProtoSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtoSchema")
            .field("file", &self.file.name())
            .finish()
    }
}

/// Files by import name, then Google's well-known types.
struct Files(HashMap<String, File>);

impl FileResolver for Files {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| protox::Error::file_not_found(name))
    }
}

fn parse_file(name: &str, schema: &str) -> Result<File, String> {
    // Base64 text never has the braces every `.proto` file with a message has.
    if !schema.contains('{') {
        if let Ok(bytes) = STANDARD.decode(schema.trim()) {
            let mut proto =
                prost_reflect::prost_types::FileDescriptorProto::decode(bytes.as_slice())
                    .map_err(|e| format!("not a FileDescriptorProto: {e}"))?;
            if proto.name.as_deref().unwrap_or_default().is_empty() {
                proto.name = Some(name.to_owned());
            }
            return Ok(File::from_file_descriptor_proto(proto));
        }
    }
    File::from_source(name, schema).map_err(|e| e.to_string())
}

impl ProtoSchema {
    /// Compiles `schema` with `references`: (import name, schema) pairs.
    pub fn compile(schema: &str, references: &[(String, String)]) -> Result<ProtoSchema, String> {
        let mut files = HashMap::new();
        for (name, text) in references {
            files.insert(name.clone(), parse_file(name, text)?);
        }
        let main = parse_file(MAIN_FILE, schema)?;
        let main_name = main.name().to_owned();
        files.insert(main_name.clone(), main);
        let mut chain = ChainFileResolver::new();
        chain.add(Files(files));
        chain.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(chain);
        compiler.include_imports(true);
        compiler.open_file(&main_name).map_err(|e| e.to_string())?;
        let pool: DescriptorPool = compiler.descriptor_pool();
        let file = pool
            .get_file_by_name(&main_name)
            .ok_or_else(|| format!("{main_name} missing after compiling"))?;
        Ok(ProtoSchema { file })
    }

    fn message(&self, path: &[usize]) -> Result<MessageDescriptor, String> {
        let missing = || format!("no message at index path {path:?}");
        let (&first, rest) = path.split_first().ok_or_else(missing)?;
        let mut message = self.file.messages().nth(first).ok_or_else(missing)?;
        for &i in rest {
            let child = message.child_messages().nth(i);
            message = child.ok_or_else(missing)?;
        }
        Ok(message)
    }

    /// Decodes a framed body (message-index path, then the message) to JSON text.
    pub fn decode(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let (path, bytes) = framing::message_path(body)?;
        let descriptor = self.message(&path)?;
        let message = DynamicMessage::decode(descriptor, bytes).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(bytes.len() * 2 + 16);
        let mut serializer = serde_json::Serializer::new(&mut out);
        message
            .serialize_with_options(&mut serializer, &SerializeOptions::new())
            .map_err(|e| e.to_string())?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMON: &str =
        r#"syntax = "proto3"; package c; message Money { string currency = 1; int64 units = 2; }"#;
    const ORDERS: &str = r#"
        syntax = "proto3";
        package o;
        import "common.proto";
        import "google/protobuf/timestamp.proto";
        message Unused { string x = 1; }
        message Order {
            message Line { string sku = 1; }
            int64 id = 1;
            c.Money total = 2;
            google.protobuf.Timestamp at = 3;
            repeated Line lines = 4;
            oneof pick { string name = 5; int32 number = 6; }
        }"#;

    fn schema() -> ProtoSchema {
        ProtoSchema::compile(ORDERS, &[("common.proto".into(), COMMON.into())])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn encode(path: &[usize], message: &DynamicMessage) -> Vec<u8> {
        let mut out = Vec::new();
        framing::encode_message_path(path, &mut out);
        out.extend(message.encode_to_vec());
        out
    }

    #[test]
    fn decodes_a_message_that_is_not_first_with_imports() {
        let s = schema();
        let order = s.message(&[1]).unwrap_or_else(|e| panic!("{e}"));
        let json = r#"{"id":"9007199254740993","total":{"currency":"EUR","units":"5"},"at":"2024-01-01T00:00:00Z","lines":[{"sku":"a"}],"number":7}"#;
        let mut de = serde_json::Deserializer::from_str(json);
        let message = DynamicMessage::deserialize(order, &mut de).unwrap_or_else(|e| panic!("{e}"));
        let text = s
            .decode(&encode(&[1], &message))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(String::from_utf8_lossy(&text), json);
        // Order.Line is [1, 0].
        let line = s.message(&[1, 0]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(line.name(), "Line");
        assert!(s.decode(&[2, 8]).is_err(), "index path [4] does not exist");
    }

    #[test]
    fn accepts_a_base64_descriptor() {
        let s = schema();
        let bytes = s.file.file_descriptor_proto().encode_to_vec();
        let common = schema()
            .file
            .dependencies()
            .next()
            .map(|f| f.file_descriptor_proto().encode_to_vec());
        let refs = vec![(
            "common.proto".to_owned(),
            STANDARD.encode(common.unwrap_or_default()),
        )];
        let again =
            ProtoSchema::compile(&STANDARD.encode(bytes), &refs).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            again.message(&[1]).map(|m| m.full_name().to_owned()).ok(),
            Some("o.Order".into())
        );
    }

    #[test]
    fn bad_schemas_are_errors() {
        assert!(ProtoSchema::compile("message {", &[]).is_err());
        assert!(ProtoSchema::compile(ORDERS, &[]).is_err(), "missing import");
    }
}
