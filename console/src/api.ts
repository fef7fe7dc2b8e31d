/** The custody HTTP API (openapi.yaml): bearer ID token, cookies, problem+json errors. */

export interface Problem {
  type?: string;
  title: string;
  status: number;
  detail: string;
  field?: string;
}

export class ApiError extends Error implements Problem {
  type?: string;
  title: string;
  status: number;
  detail: string;
  field?: string;

  constructor(problem: Problem) {
    super(`${problem.title}: ${problem.detail}`);
    this.type = problem.type;
    this.title = problem.title;
    this.status = problem.status;
    this.detail = problem.detail;
    this.field = problem.field;
  }

  /** The slug of `https://custody.dev/problems/<slug>`. */
  get slug(): string | undefined {
    return this.type?.split('/').pop();
  }
}

export interface ApiOptions {
  query?: Record<string, string | number | undefined | null>;
  headers?: Record<string, string>;
}

export class Api {
  /** Called when the API says the token is no longer good (401). */
  onUnauthorized?: () => void;

  constructor(
    readonly baseUrl: string,
    private readonly token: () => string,
    private readonly credentials: RequestCredentials = 'include',
  ) {}

  url(path: string, query?: ApiOptions['query']): string {
    const url = new URL(this.baseUrl + path);
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null && value !== '') url.searchParams.set(key, String(value));
    }
    return url.toString();
  }

  async request<T>(method: string, path: string, body?: unknown, options: ApiOptions = {}): Promise<T> {
    const headers: Record<string, string> = {
      accept: 'application/json',
      authorization: `Bearer ${this.token()}`,
      ...options.headers,
    };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let response: Response;
    try {
      response = await fetch(this.url(path, options.query), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: this.credentials,
        redirect: 'manual',
        cache: 'no-store',
      });
    } catch (err) {
      throw new ApiError({
        title: 'The API could not be reached',
        status: 0,
        detail: err instanceof Error ? err.message : String(err),
      });
    }
    if (response.type === 'opaqueredirect') {
      throw new ApiError({
        title: 'Unexpected redirect',
        status: 0,
        detail: `${method} ${path} answered with a redirect instead of JSON.`,
      });
    }
    if (response.status === 204) return undefined as T;
    const text = await response.text();
    let parsed: unknown = undefined;
    if (text) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
    }
    if (!response.ok) {
      const problem = (parsed ?? {}) as Partial<Problem> & { message?: string };
      const error = new ApiError({
        type: problem.type,
        title: problem.title ?? problem.message ?? response.statusText ?? 'Request failed',
        status: response.status,
        detail: problem.detail ?? problem.message ?? `${method} ${path} answered ${response.status}.`,
        field: problem.field,
      });
      if (response.status === 401) this.onUnauthorized?.();
      throw error;
    }
    return parsed as T;
  }

  get<T>(path: string, options?: ApiOptions) {
    return this.request<T>('GET', path, undefined, options);
  }
  post<T>(path: string, body?: unknown, options?: ApiOptions) {
    return this.request<T>('POST', path, body, options);
  }
  put<T>(path: string, body: unknown, options?: ApiOptions) {
    return this.request<T>('PUT', path, body, options);
  }
  delete<T>(path: string, body?: unknown, options?: ApiOptions) {
    return this.request<T>('DELETE', path, body, options);
  }
}

export function asProblem(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  return new ApiError({
    title: 'Something went wrong',
    status: 0,
    detail: err instanceof Error ? err.message : String(err),
  });
}
