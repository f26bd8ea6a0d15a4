/**
 * A table's first rows as the user's policy shows them, in a main-area tab: wide tables
 * scroll instead of being cut off, NULL is marked as NULL (an empty string stays empty).
 */
import { ReactWidget } from '@jupyterlab/apputils';
import * as React from 'react';

import { IPreview } from './api';

function Cell(props: { value: string | null }): JSX.Element {
  if (props.value === null) {
    return <td className="ldw-null">NULL</td>;
  }
  if (props.value === '') {
    return <td className="ldw-empty-string" title="empty string" />;
  }
  return <td>{props.value}</td>;
}

export function PreviewTable(props: { preview: IPreview }): JSX.Element {
  const { preview } = props;
  if (preview.denied) {
    return <div className="ldw-error ldw-denied">denied: {preview.message}</div>;
  }
  return (
    <div className="ldw-preview-scroll">
      <div className="ldw-preview-caption">
        first {preview.rows.length} rows of {preview.ref}, as your policy shows them
      </div>
      <table className="ldw-preview-table">
        <thead>
          <tr>
            {preview.columns.map(c => (
              <th key={c.name} title={c.type}>
                {c.name}
                <div className="ldw-preview-type">{c.type}</div>
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {preview.rows.map((row, i) => (
            <tr key={i}>
              {row.map((value, j) => (
                <Cell key={j} value={value} />
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export class PreviewWidget extends ReactWidget {
  constructor(
    readonly ref: string,
    private _preview: IPreview | null,
    private _error = ''
  ) {
    super();
    this.addClass('ldw-Preview');
    this.id = `ldw-preview-${ref.replace(/[^A-Za-z0-9_-]/g, '_')}`;
    this.title.label = `Preview: ${ref}`;
    this.title.closable = true;
  }

  setContent(preview: IPreview | null, error: string): void {
    this._preview = preview;
    this._error = error;
    this.update();
  }

  render(): JSX.Element {
    if (this._error) {
      return <div className="ldw-error">{this._error}</div>;
    }
    if (!this._preview) {
      return <div className="ldw-empty">reading the first rows…</div>;
    }
    return <PreviewTable preview={this._preview} />;
  }
}
