//! A pickle reader for exactly what `torch.save(state_dict)` writes: a (possibly ordered) dict
//! of string keys to tensors rebuilt by `torch._utils._rebuild_tensor_v2` from persistent
//! storage references. Nothing is ever imported or called: globals are names, and the only
//! reductions understood are the tensor rebuild, `OrderedDict()` and `_rebuild_parameter`;
//! anything else becomes an opaque value that the caller refuses.
//!
//! The memo holds copies rather than shared references, which is exact for the tree-shaped data
//! of a state dict (memoised values are not mutated after being fetched).

use std::collections::HashMap;

/// Why the pickle could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PickleError {
    #[error("the pickle ends early at byte {0}")]
    Truncated(usize),
    #[error("unsupported pickle opcode 0x{opcode:02x} at byte {at}: this is not a plain torch.save state dict")]
    Opcode { opcode: u8, at: usize },
    #[error("malformed pickle at byte {at}: {what}")]
    Malformed { at: usize, what: String },
}

/// A tensor as the pickle describes it; its bytes live in the archive's `data/<key>` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRef {
    /// The storage class, e.g. `FloatStorage`.
    pub storage_type: String,
    pub key: String,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global {
        module: String,
        name: String,
    },
    Storage {
        storage_type: String,
        key: String,
    },
    Tensor(TensorRef),
    /// Any other object: what built it, and with what.
    Object(Box<Value>, Box<Value>),
    Mark,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or(PickleError::Truncated(self.pos))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.array::<1>()?[0])
    }

    fn len_u32(&mut self) -> Result<usize, PickleError> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or(PickleError::Truncated(self.data.len()))?;
        let line = self.take(n + 1)?;
        self.utf8(&line[..n])
    }

    fn utf8(&self, bytes: &[u8]) -> Result<String, PickleError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| self.malformed("a string is not UTF-8"))
    }

    fn malformed(&self, what: &str) -> PickleError {
        PickleError::Malformed { at: self.pos, what: what.to_string() }
    }
}

/// Unpickles `data` (protocol 2 as torch.save writes it; protocols 3 to 5 opcodes too).
pub fn unpickle(data: &[u8]) -> Result<Value, PickleError> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    loop {
        let at = r.pos;
        let opcode = r.u8()?;
        let pop = |stack: &mut Vec<Value>| stack.pop().ok_or(PickleError::Malformed { at, what: "empty stack".into() });
        let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>, PickleError> {
            let mark = stack
                .iter()
                .rposition(|v| *v == Value::Mark)
                .ok_or(PickleError::Malformed { at, what: "no mark on the stack".into() })?;
            let items = stack.split_off(mark + 1);
            stack.pop();
            Ok(items)
        };
        match opcode {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.take(8)?; // FRAME
            }
            b'.' => return pop(&mut stack),
            b'(' => stack.push(Value::Mark),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::List(items));
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Dict(pairs(items, at)?));
            }
            0x85..=0x87 => {
                let n = usize::from(opcode - 0x84);
                let start = stack.len().checked_sub(n).ok_or(r.malformed("tuple of missing items"))?;
                let items = stack.split_off(start);
                stack.push(Value::Tuple(items));
            }
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => stack.push(Value::Int(i64::from(i32::from_le_bytes(r.array()?)))),
            b'K' => stack.push(Value::Int(i64::from(r.u8()?))),
            b'M' => stack.push(Value::Int(i64::from(u16::from_le_bytes(r.array()?)))),
            0x8a => {
                let n = usize::from(r.u8()?);
                let bytes = r.take(n)?;
                if n > 8 {
                    return Err(r.malformed("integer wider than 64 bits"));
                }
                let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 };
                let mut le = [fill; 8];
                le[..n].copy_from_slice(bytes);
                stack.push(Value::Int(i64::from_le_bytes(le)));
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(r.array()?))),
            b'X' | 0x8c | 0x8d | b'T' | b'U' | b'B' | b'C' => {
                let n = match opcode {
                    0x8c | b'U' | b'C' => usize::from(r.u8()?),
                    0x8d => usize::try_from(u64::from_le_bytes(r.array()?)).map_err(|_| r.malformed("huge string"))?,
                    _ => r.len_u32()?,
                };
                let bytes = r.take(n)?;
                stack.push(match opcode {
                    b'B' | b'C' => Value::Bytes(bytes.to_vec()),
                    _ => Value::Str(r.utf8(bytes)?),
                });
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global { module, name });
            }
            0x93 => {
                let (name, module) = (pop(&mut stack)?, pop(&mut stack)?);
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err(r.malformed("STACK_GLOBAL needs two strings"));
                };
                stack.push(Value::Global { module, name });
            }
            b'q' | b'r' | 0x94 => {
                let key = match opcode {
                    b'q' => u32::from(r.u8()?),
                    b'r' => u32::from_le_bytes(r.array()?),
                    _ => memo.len() as u32,
                };
                let top = stack.last().ok_or(r.malformed("memoising an empty stack"))?;
                memo.insert(key, top.clone());
            }
            b'h' | b'j' => {
                let key = if opcode == b'h' { u32::from(r.u8()?) } else { u32::from_le_bytes(r.array()?) };
                let value = memo.get(&key).ok_or(r.malformed("reference to an unknown memo entry"))?;
                stack.push(value.clone());
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(persistent_load(pid).map_err(|what| PickleError::Malformed { at, what })?);
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                stack.push(reduce(callable, args).map_err(|what| PickleError::Malformed { at, what })?);
            }
            b'b' => {
                // BUILD sets attributes (an OrderedDict's `_metadata`): irrelevant to the weights.
                pop(&mut stack)?;
                if stack.is_empty() {
                    return Err(r.malformed("BUILD with no object"));
                }
            }
            b's' | b'u' => {
                let items = if opcode == b's' {
                    let value = pop(&mut stack)?;
                    vec![pop(&mut stack)?, value]
                } else {
                    pop_mark(&mut stack)?
                };
                let new = pairs(items, at)?;
                match stack.last_mut() {
                    Some(Value::Dict(entries)) => entries.extend(new),
                    _ => return Err(r.malformed("SETITEM on something that is not a dict")),
                }
            }
            b'a' | b'e' => {
                let items = if opcode == b'a' { vec![pop(&mut stack)?] } else { pop_mark(&mut stack)? };
                match stack.last_mut() {
                    Some(Value::List(list)) => list.extend(items),
                    _ => return Err(r.malformed("APPEND on something that is not a list")),
                }
            }
            _ => return Err(PickleError::Opcode { opcode, at }),
        }
    }
}

fn pairs(items: Vec<Value>, at: usize) -> Result<Vec<(Value, Value)>, PickleError> {
    if !items.len().is_multiple_of(2) {
        return Err(PickleError::Malformed { at, what: "odd number of dict items".into() });
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// torch's persistent id: `("storage", <storage class>, key, location, numel)`.
fn persistent_load(pid: Value) -> Result<Value, String> {
    if let Value::Tuple(items) = &pid
        && let [Value::Str(tag), Value::Global { name, .. }, Value::Str(key), ..] = items.as_slice()
        && tag == "storage"
    {
        return Ok(Value::Storage { storage_type: name.clone(), key: key.clone() });
    }
    Err(format!("unsupported persistent id {pid:?}"))
}

fn ints(value: &Value) -> Option<Vec<i64>> {
    match value {
        Value::Tuple(items) | Value::List(items) => {
            items.iter().map(|v| if let Value::Int(i) = v { Some(*i) } else { None }).collect()
        }
        _ => None,
    }
}

fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global { module, name } = &callable else {
        return Ok(Value::Object(Box::new(callable), Box::new(args)));
    };
    match (module.as_str(), name.as_str(), &args) {
        ("torch._utils", "_rebuild_tensor_v2", Value::Tuple(a)) => {
            let [Value::Storage { storage_type, key }, Value::Int(offset), size, stride, ..] = a.as_slice() else {
                return Err(format!("unexpected _rebuild_tensor_v2 arguments {args:?}"));
            };
            let (Some(size), Some(stride)) = (ints(size), ints(stride)) else {
                return Err("tensor size or stride is not a tuple of integers".into());
            };
            Ok(Value::Tensor(TensorRef {
                storage_type: storage_type.clone(),
                key: key.clone(),
                offset: *offset,
                size,
                stride,
            }))
        }
        ("torch._utils", "_rebuild_parameter", Value::Tuple(a)) if matches!(a.first(), Some(Value::Tensor(_))) => {
            Ok(a[0].clone())
        }
        ("collections", "OrderedDict", Value::Tuple(a)) if a.is_empty() => Ok(Value::Dict(Vec::new())),
        _ => Ok(Value::Object(Box::new(callable), Box::new(args))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_scalars_containers_and_memo() {
        // pickle.dumps({"a": [1, -2, 300, 70000, 2**40, None, True, 1.5], "b": ("x", "y")}, protocol=2)
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffM,\x01J\x70\x11\x01\x00\x8a\x06\x00\x00\x00\x00\x00\x01N\x88G?\xf8\x00\x00\x00\x00\x00\x00eX\x01\x00\x00\x00bq\x03X\x01\x00\x00\x00xq\x04X\x01\x00\x00\x00yq\x05\x86q\x06u.";
        let value = unpickle(data).unwrap();
        let expected = Value::Dict(vec![
            (
                Value::Str("a".into()),
                Value::List(vec![
                    Value::Int(1),
                    Value::Int(-2),
                    Value::Int(300),
                    Value::Int(70000),
                    Value::Int(1 << 40),
                    Value::None,
                    Value::Bool(true),
                    Value::Float(1.5),
                ]),
            ),
            (Value::Str("b".into()), Value::Tuple(vec![Value::Str("x".into()), Value::Str("y".into())])),
        ]);
        assert_eq!(value, expected);
    }

    #[test]
    fn refuses_truncation_unknown_opcodes_and_bad_structure() {
        assert_eq!(unpickle(b"\x80\x02X\x05\x00\x00\x00ab"), Err(PickleError::Truncated(7)));
        assert!(matches!(unpickle(b"\x80\x02i"), Err(PickleError::Opcode { opcode: b'i', at: 2 })));
        assert!(matches!(unpickle(b"K\x01s."), Err(PickleError::Malformed { .. })));
        assert!(matches!(unpickle(b"h\x07."), Err(PickleError::Malformed { .. })));
        assert!(matches!(unpickle(b"."), Err(PickleError::Malformed { .. })));
        assert!(matches!(
            unpickle(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00."),
            Err(PickleError::Malformed { .. })
        ));
    }
}
