//! A small builder over `tract_onnx::pb` (prost types) for writing ONNX graphs.

use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto::Dimension, tensor_shape_proto::dimension::Value as DimValue,
    type_proto,
};

pub const OPSET: i64 = 13;

/// A dimension of a declared input or output.
pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

#[derive(Default)]
pub struct Graph {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    pub inputs: Vec<ValueInfoProto>,
    pub outputs: Vec<ValueInfoProto>,
}

pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: value, ..Default::default() }
}

pub fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

impl Graph {
    /// Adds a node; returns its (first) output name for chaining.
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attributes,
            ..Default::default()
        });
        outputs[0].to_string()
    }

    /// An initializer of `data_type` holding `raw_data` (little-endian values).
    fn init_raw(&mut self, name: &str, dims: &[usize], data_type: DataType, raw_data: Vec<u8>) -> String {
        self.initializers.push(TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data,
            ..Default::default()
        });
        name.to_string()
    }

    pub fn init_f32(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len(), "{name}");
        self.init_raw(name, dims, DataType::Float, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn init_i64(&mut self, name: &str, dims: &[usize], values: &[i64]) -> String {
        self.init_raw(name, dims, DataType::Int64, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn init_i8(&mut self, name: &str, dims: &[usize], values: &[i8]) -> String {
        self.init_raw(name, dims, DataType::Int8, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn init_u8(&mut self, name: &str, dims: &[usize], values: &[u8]) -> String {
        self.init_raw(name, dims, DataType::Uint8, values.to_vec())
    }

    pub fn init_i32(&mut self, name: &str, dims: &[usize], values: &[i32]) -> String {
        self.init_raw(name, dims, DataType::Int32, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    Dim::Fixed(v) => DimValue::DimValue(*v),
                    Dim::Named(n) => DimValue::DimParam(n.to_string()),
                }),
                ..Default::default()
            })
            .collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: DataType::Float as i32,
                    shape: Some(TensorShapeProto { dim }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn into_model(self, name: &str, metadata: Vec<(String, String)>) -> ModelProto {
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: "faceage-host".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(GraphProto {
                name: name.into(),
                node: self.nodes,
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            metadata_props: metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        }
    }
}
