//! The part of JSON Schema canaries need: `type`, `properties`, `required`, `items`, `enum`,
//! `const`, `minimum`/`maximum`, `minLength`/`maxLength`, `additionalProperties: false`.
//! Keywords outside this set are ignored (validation is then more lenient, never stricter).

use serde_json::Value;

/// Why `value` does not match `schema`, or `None` when it does.
pub fn mismatch(schema: &Value, value: &Value) -> Option<String> {
    at(schema, value, "$")
}

fn at(schema: &Value, v: &Value, path: &str) -> Option<String> {
    let s = schema.as_object()?;
    if let Some(t) = s.get("type") {
        let ok = match t {
            Value::String(t) => is_type(t, v),
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(|t| is_type(t, v)),
            _ => true,
        };
        if !ok {
            return Some(format!("{path} is {}, expected {t}", kind(v)));
        }
    }
    if let Some(Value::Array(allowed)) = s.get("enum")
        && !allowed.contains(v)
    {
        return Some(format!(
            "{path} = {v} is not one of {}",
            Value::Array(allowed.clone())
        ));
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        return Some(format!("{path} = {v}, expected {c}"));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            return Some(format!("{path} = {n} is below {min}"));
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            return Some(format!("{path} = {n} is above {max}"));
        }
    }
    if let Some(text) = v.as_str() {
        let len = text.chars().count() as u64;
        if s.get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
            || s.get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
        {
            return Some(format!(
                "{path} has length {len}, outside the schema's bounds"
            ));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        if let Some(Value::Array(required)) = s.get("required") {
            for r in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Some(format!("{path}.{r} is missing"));
                }
            }
        }
        for (k, child) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => {
                    if let Some(m) = at(sub, child, &format!("{path}.{k}")) {
                        return Some(m);
                    }
                }
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Some(format!("{path}.{k} is not allowed"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, child) in arr.iter().enumerate() {
            if let Some(m) = at(items, child, &format!("{path}[{i}]")) {
                return Some(m);
            }
        }
    }
    None
}

fn is_type(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => true,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn checks_types_required_and_nesting() {
        let schema = json!({
            "type": "object",
            "properties": {
                "sum": {"type": "integer", "minimum": 0},
                "tags": {"type": "array", "items": {"type": "string"}},
                "unit": {"enum": ["none", "apples"]}
            },
            "required": ["sum"],
            "additionalProperties": false
        });
        assert_eq!(mismatch(&schema, &json!({"sum": 5, "tags": ["a"]})), None);
        assert_eq!(
            mismatch(&schema, &json!({"tags": []})).unwrap(),
            "$.sum is missing"
        );
        assert!(
            mismatch(&schema, &json!({"sum": "5"}))
                .unwrap()
                .contains("a string")
        );
        assert!(
            mismatch(&schema, &json!({"sum": 1, "tags": [1]}))
                .unwrap()
                .contains("$.tags[0]")
        );
        assert!(
            mismatch(&schema, &json!({"sum": 1, "x": 1}))
                .unwrap()
                .contains("not allowed")
        );
        assert!(
            mismatch(&schema, &json!({"sum": -1}))
                .unwrap()
                .contains("below")
        );
        assert!(mismatch(&schema, &json!({"sum": 1, "unit": "kg"})).is_some());
        assert!(mismatch(&schema, &json!([1])).is_some());
    }
}
