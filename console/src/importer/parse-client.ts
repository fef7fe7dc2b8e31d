import { parseFile, type Format, type Parsed, type Progress } from './parse';

/**
 * Parses in a Web Worker so the page stays responsive. Where no worker can start
 * (a host page whose CSP or origin forbids it), parses on the main thread in chunks.
 */
export async function parseInBackground(file: Blob, format: Format, progress: Progress): Promise<Parsed> {
  let worker: Worker | undefined;
  try {
    worker = new Worker(new URL('./parse.worker.ts', import.meta.url), { type: 'module' });
  } catch {
    worker = undefined;
  }
  if (worker) {
    const w = worker;
    const result = await new Promise<Parsed | null>((resolve, reject) => {
      let started = false;
      w.onmessage = (event: MessageEvent) => {
        started = true;
        const data = event.data as { kind: string; fraction?: number; parsed?: Parsed; message?: string };
        if (data.kind === 'progress') progress(data.fraction ?? 0);
        else if (data.kind === 'done') resolve(data.parsed!);
        else reject(new Error(data.message));
      };
      w.onerror = (event) => {
        event.preventDefault();
        if (!started) resolve(null);
        else reject(new Error(event.message || 'the parser failed'));
      };
      w.postMessage({ file, format });
    }).finally(() => w.terminate());
    if (result) return result;
  }
  return parseFile(file, format, progress);
}
