/// <reference lib="webworker" />
import { parseFile, type Format } from './parse';

declare const self: DedicatedWorkerGlobalScope;

self.onmessage = async (event: MessageEvent<{ file: Blob; format: Format }>) => {
  try {
    const parsed = await parseFile(event.data.file, event.data.format, (fraction) =>
      self.postMessage({ kind: 'progress', fraction }),
    );
    self.postMessage({ kind: 'done', parsed });
  } catch (err) {
    self.postMessage({ kind: 'error', message: err instanceof Error ? err.message : String(err) });
  }
};
