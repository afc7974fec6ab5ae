//! JSON Schema of the TrafficSplit document, generated from the types (and their doc comments).

use super::TrafficSplit;

/// Canonical id of the schema.
pub const SCHEMA_ID: &str = "https://trafficshift.dev/schemas/trafficsplit-v1alpha1.json";

/// The JSON Schema (draft 2020-12) of a TrafficSplit document. Unknown fields are rejected
/// (`additionalProperties: false`), as the loader does.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(TrafficSplit);
    let mut value = schema.to_value();
    if let Some(obj) = value.as_object_mut() {
        obj.insert("$id".into(), SCHEMA_ID.into());
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn all_objects<'a>(v: &'a Value, out: &mut Vec<&'a serde_json::Map<String, Value>>) {
        match v {
            Value::Object(o) => {
                out.push(o);
                o.values().for_each(|c| all_objects(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| all_objects(c, out)),
            _ => {}
        }
    }

    #[test]
    fn schema_has_id_and_spec_properties() {
        let schema = json_schema();
        assert_eq!(schema["$id"], SCHEMA_ID);
        assert!(schema["$schema"]
            .as_str()
            .is_some_and(|s| s.contains("json-schema.org")));
        assert_eq!(schema["type"], "object");
        for top in ["apiVersion", "kind", "metadata", "spec"] {
            assert!(
                schema["properties"].get(top).is_some(),
                "missing top-level property {top}"
            );
        }
        let spec_ref = schema["properties"]["spec"]["$ref"]
            .as_str()
            .expect("spec is a $ref");
        let name = spec_ref.rsplit('/').next().unwrap_or_default();
        let spec = &schema["$defs"][name];
        for prop in ["record", "backends", "weights", "rollout", "gates"] {
            assert!(
                spec["properties"].get(prop).is_some(),
                "missing spec property {prop} in {spec}"
            );
        }
        let required: Vec<&str> = spec["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(required, ["record", "backends", "weights"]);
    }

    #[test]
    fn schema_is_closed_and_refs_resolve() {
        let schema = json_schema();
        assert_eq!(schema["additionalProperties"], false);
        let mut objects = Vec::new();
        all_objects(&schema, &mut objects);
        let mut structs = 0;
        for o in &objects {
            // Every struct (an object schema with properties) rejects unknown fields.
            if o.get("type") == Some(&Value::from("object")) && o.contains_key("properties") {
                structs += 1;
                assert_eq!(
                    o.get("additionalProperties"),
                    Some(&Value::Bool(false)),
                    "open object: {o:?}"
                );
            }
            if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                let name = r.strip_prefix("#/$defs/").expect("local $ref");
                assert!(schema["$defs"].get(name).is_some(), "dangling $ref {r}");
            }
        }
        assert!(
            structs >= 10,
            "expected the nested structs, found {structs}"
        );
        // Serializes to valid JSON and back.
        let text = serde_json::to_string_pretty(&schema).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), schema);
    }
}
