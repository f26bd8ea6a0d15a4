/**
 * The panel's view of the server extension's JSON API (`{baseUrl}ldw/api/...`).
 *
 * Requests go through JupyterLab's ServerConnection, which adds the Jupyter token or XSRF
 * header: the server extension refuses anything else.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface IStatus {
  user: string;
  roles: string[];
  governed: boolean;
  where: string;
  memory_limit: number | null;
  used_bytes: number | null;
  spilled_bytes: number | null;
  datasets: number | null;
  cached: number | null;
  setup_code: string;
}

export interface ISource {
  name: string;
  dialect: string;
  host: string | null;
  database: string | null;
}

export interface ITable {
  schema: string;
  table: string;
  kind: string;
  rows: number | null;
  ref: string | null;
  name: string;
}

export interface IColumn {
  name: string;
  source_type: string;
  arrow_type: string;
  nullable: boolean;
  note: string;
  tags: string[];
}

export interface IColumns {
  ref: string;
  denied: boolean;
  message: string;
  columns: IColumn[];
  tags: string[];
}

export interface IPreview {
  ref: string;
  denied: boolean;
  message: string;
  columns: { name: string; type: string }[];
  rows: (string | null)[][];
}

export interface IProgress {
  rows: number;
  bytes: number;
  seconds: number;
  mb_per_s: number;
  done: boolean;
}

export interface IJob {
  id: number;
  action: string;
  dataset: string;
  state: 'running' | 'done' | 'failed';
  message: string;
  progress: IProgress | null;
  started: number;
  finished: number | null;
}

export interface IDataset {
  name: string;
  owner: string;
  ref: string;
  mine: boolean;
  mapping: string;
  state: string;
  stale: boolean;
  stale_reason: string;
  rows: number | null;
  bytes: number | null;
  hits: number;
  pinned: boolean;
  memory_only: boolean;
  export: string | null;
  shared_with: string[];
  tier: string | null;
  version: string | null;
  error: string;
  denied: boolean;
  progress: IProgress | null;
  job: IJob | null;
}

export interface IDatasets {
  user: string;
  datasets: IDataset[];
  jobs: IJob[];
}

/** An error answered by the server extension: its kind (an ldw error class) and message. */
export class ApiError extends Error {
  constructor(
    readonly kind: string,
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

const settings = ServerConnection.makeSettings();

async function request<T>(path: string, init: RequestInit = {}): Promise<T> {
  const url = URLExt.join(settings.baseUrl, 'ldw', 'api', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError('NetworkError', 'the Jupyter server cannot be reached', 0);
  }
  const text = await response.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const kind = body?.error ?? `HTTP ${response.status}`;
    const message = body?.message ?? response.statusText;
    throw new ApiError(kind, message, response.status);
  }
  return body as T;
}

function query(path: string, args: Record<string, string | number | null>): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(args)) {
    if (value !== null && value !== undefined) {
      params.set(key, String(value));
    }
  }
  const encoded = params.toString();
  return encoded ? `${path}?${encoded}` : path;
}

export const api = {
  status: () => request<IStatus>('status'),
  sources: () => request<ISource[]>('sources'),
  schemas: (source: string) => request<string[]>(query('schemas', { source })),
  tables: (source: string, schema: string) =>
    request<ITable[]>(query('tables', { source, schema })),
  columns: (source: string, schema: string, table: string) =>
    request<IColumns>(query('columns', { source, schema, table })),
  preview: (source: string, schema: string, table: string, rows = 50) =>
    request<IPreview>(query('preview', { source, schema, table, rows })),
  datasets: () => request<IDatasets>('datasets'),
  map: (name: string, source: string, schema: string, table: string) =>
    request<{ name: string; ref: string; state: string }>('map', {
      method: 'POST',
      body: JSON.stringify({ name, source, schema, table })
    }),
  action: (
    action: string,
    name: string,
    owner: string | null,
    args: Record<string, string> = {}
  ) =>
    request<{ job?: IJob; state?: string; shared_with?: string[] }>('action', {
      method: 'POST',
      body: JSON.stringify({ action, name, owner, args })
    })
};
