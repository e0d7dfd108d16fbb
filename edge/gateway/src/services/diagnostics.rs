//! `openshell.v1.Diagnostics`: stateless link checks in all four RPC shapes, used by
//! `openshell doctor` and the transport benchmarks.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use openshell_proto::diagnostics_server::Diagnostics;
use openshell_proto::{Chunk, DownloadRequest, PingRequest, PingResponse, UploadSummary};
use tonic::{Request, Response, Status, Streaming};

/// Largest single payload or chunk the gateway generates.
const MAX_CHUNK: u32 = 1 << 20;
/// Largest download the gateway will stream for one request.
const MAX_DOWNLOAD: u64 = 1 << 30;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send + 'static>>;

#[derive(Debug, Default)]
pub struct DiagnosticsService;

#[tonic::async_trait]
impl Diagnostics for DiagnosticsService {
    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        let req = req.into_inner();
        let payload = if req.response_size > 0 {
            vec![0x5a; req.response_size.min(MAX_CHUNK) as usize]
        } else {
            req.payload
        };
        Ok(Response::new(PingResponse {
            payload,
            server_time_ms: crate::now_ms(),
        }))
    }

    async fn download(
        &self,
        req: Request<DownloadRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let req = req.into_inner();
        if req.chunk_size == 0 || req.chunk_size > MAX_CHUNK {
            return Err(Status::invalid_argument(format!(
                "chunk_size must be 1..={MAX_CHUNK}"
            )));
        }
        if u64::from(req.chunks) * u64::from(req.chunk_size) > MAX_DOWNLOAD {
            return Err(Status::invalid_argument("download larger than 1 GiB"));
        }
        let data = bytes::Bytes::from(vec![0xa5; req.chunk_size as usize]);
        let stream = futures::stream::iter(0..u64::from(req.chunks)).map(move |seq| {
            Ok(Chunk {
                seq,
                data: data.to_vec(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn upload(
        &self,
        req: Request<Streaming<Chunk>>,
    ) -> Result<Response<UploadSummary>, Status> {
        let mut stream = req.into_inner();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let (mut chunks, mut bytes) = (0u64, 0u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if chunk.seq != chunks {
                return Err(Status::invalid_argument(format!(
                    "chunk {} arrived where {chunks} was expected",
                    chunk.seq
                )));
            }
            ctx.update(&chunk.data);
            chunks += 1;
            bytes += chunk.data.len() as u64;
        }
        Ok(Response::new(UploadSummary {
            chunks,
            bytes,
            sha256: hex::encode(ctx.finish().as_ref()),
        }))
    }

    async fn echo(&self, req: Request<Streaming<Chunk>>) -> Result<Response<ChunkStream>, Status> {
        let stream = req.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }
}
